"""Docs tables are rendered from committed results files: a stale or hand-edited table fails here."""

import json
from pathlib import Path

import pytest

from doubleopt.bench.docs_tables import format_cell, main, render_page, stale_pages

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_docs_table_matches_its_results_file():
    assert stale_pages(DOCS) == [], "run: python -m doubleopt.bench.docs_tables"


def test_rendering_formats_filters_and_blanks(tmp_path):
    rows = [{"m": "a", "t": 1.23456, "f.x y": 2.0, "k": 1}, {"m": "b", "t": float("nan"), "f.x y": 3.0, "k": 2}]
    (tmp_path / "r.json").write_text(json.dumps({"rows": rows}))
    page = "x\n<!-- table: r.json\nwhere: k = 1\nname = {m}\ntime = {t:.2f} s\n-->\nold\n<!-- /table -->\ny"
    out = render_page(page, tmp_path)
    assert "| name | time |\n|---|---|\n| a | 1.23 s |\n<!-- /table -->\ny" in out
    both = render_page("<!-- table: r.json\nwhere: m in a | b\nname = {m}\n-->\n<!-- /table -->", tmp_path)
    assert "| a |" in both and "| b |" in both
    assert format_cell("{t:.1f} s ({f.x y:.0f})", rows[1]) == "-"  # NaN anywhere blanks the cell
    assert format_cell("{f.x y:.0f}", rows[1]) == "3"
    with pytest.raises(ValueError, match="no field 'zz'"):
        render_page("<!-- table: r.json\nz = {zz}\n-->\n<!-- /table -->", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        render_page("<!-- table: missing.json\nz = {m}\n-->\n<!-- /table -->", tmp_path)


def test_check_mode_reports_a_hand_edited_table(tmp_path, capsys):
    (tmp_path / "r.json").write_text(json.dumps({"rows": [{"m": "a"}]}))
    page = tmp_path / "p.md"
    page.write_text("<!-- table: r.json\nname = {m}\n-->\n| name |\n|---|\n| edited |\n<!-- /table -->\n")
    assert main(["--docs", str(tmp_path), "--check"]) == 1
    assert "p.md" in capsys.readouterr().out
    assert main(["--docs", str(tmp_path)]) == 0
    assert "| a |" in page.read_text() and main(["--docs", str(tmp_path), "--check"]) == 0
