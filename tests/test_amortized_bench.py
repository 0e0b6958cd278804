"""Smoke runs of the amortized studies (``--quick``): they run end to end and write their reports."""

from __future__ import annotations

import json

import pytest

from doubleopt.bench import find_studies, run_study


@pytest.mark.parametrize("name, extra", [("lista", []), ("meta_ot", ["--tasks", "digits"]), ("vae", [])])
def test_study_quick(name, extra, tmp_path):
    assert name in find_studies()
    rows = run_study(name, ["--quick", "--out", str(tmp_path), *extra])
    assert rows
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["rows"] and "conditions" in data
    assert (tmp_path / f"{name}.png").exists()
