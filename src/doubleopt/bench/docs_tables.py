"""Docs tables rendered from committed results files, never typed by hand.

A table in a ``docs/*.md`` page is a block between two HTML comments; the opening one names the results file
(relative to the page) and, one per line, each column as ``header = template``, the template a text with
``{field}`` or ``{field:format spec}`` references to a row of the file's ``rows`` (a cell with a NaN or None
value prints as ``-``). An optional ``where: key = value`` line keeps the rows whose field ``key`` equals
``value`` (``where: key in a | b | c``: one of the values; several ``where`` lines: all must hold)::

    <!-- table: results/actor_critic/baseline/results.json
    method = {method}
    mean eval return (std) = {mean_return:.1f} ({std_return:.1f})
    -->
    | method | mean eval return (std) |
    |---|---|
    | doubleopt TD3 | -110.8 (0.8) |
    <!-- /table -->

``python -m doubleopt.bench.docs_tables`` rewrites every block of ``docs/*.md`` from its file; ``--check`` only
reports the pages whose tables differ from their files (the test suite runs it, so a stale table fails).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

BLOCK = re.compile(r"<!-- table: (?P<spec>.*?)-->\n(?P<body>.*?)<!-- /table -->", re.S)


FIELD = re.compile(r"\{(?P<name>[^{}:]+)(?::(?P<spec>[^{}]*))?\}")


def format_cell(template: str, row: dict[str, Any]) -> str:
    """``template`` with each ``{field}`` or ``{field:spec}`` replaced by the row's value (field names may hold
    spaces and dots); a cell with a missing value (NaN or None) in any field is ``-`` as a whole."""
    blank = False

    def sub(m: re.Match) -> str:
        nonlocal blank
        name = m["name"].strip()
        if name not in row:
            raise KeyError(name)
        value = row[name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            blank = True
            return "-"
        return format(value, m["spec"] or "")

    text = FIELD.sub(sub, template)
    return "-" if blank else text


def _rows(path: Path, where: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"docs table: results file {path} does not exist")
    rows = json.loads(path.read_text())["rows"]
    return [r for r in rows if all(str(r.get(k)) in vs for k, vs in where)]


def render_table(spec: str, page_dir: Path) -> str:
    """The markdown table a block's ``spec`` (the text of its opening comment) describes."""
    lines = [ln.strip() for ln in spec.strip().splitlines() if ln.strip()]
    if not lines:
        raise ValueError("docs table: empty specification")
    source, columns, where = lines[0], [], []
    for ln in lines[1:]:
        if ln.startswith("where:"):
            cond = ln[len("where:") :]
            key, sep, values = cond.partition(" in ")
            if not sep:
                key, _, values = cond.partition("=")
            where.append((key.strip(), [v.strip() for v in values.split("|")] if sep else [values.strip()]))
            continue
        header, sep, template = ln.partition(" = ")
        if not sep:
            raise ValueError(f"docs table {source}: column line {ln!r} is not 'header = template'")
        columns.append((header.strip(), template.strip()))
    out = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in _rows(page_dir / source, where):
        try:
            cells = [format_cell(t, row) for _, t in columns]
        except KeyError as e:
            raise ValueError(f"docs table {source}: the results have no field {e}") from None
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def render_page(text: str, page_dir: Path) -> str:
    """``text`` with every table block re-rendered from its results file."""

    def sub(m: re.Match) -> str:
        return f"<!-- table: {m['spec']}-->\n{render_table(m['spec'], page_dir)}<!-- /table -->"

    return BLOCK.sub(sub, text)


def stale_pages(docs_dir: Path) -> list[Path]:
    """The pages under ``docs_dir`` whose tables differ from their results files."""
    return [p for p in sorted(docs_dir.glob("**/*.md")) if render_page(p.read_text(), p.parent) != p.read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", default="docs", help="the docs folder (default: docs)")
    parser.add_argument("--check", action="store_true", help="only list the pages with stale tables")
    args = parser.parse_args(argv)
    docs = Path(args.docs)
    stale = stale_pages(docs)
    if args.check:
        for p in stale:
            print(f"stale table(s) in {p}: run python -m doubleopt.bench.docs_tables")
        return 1 if stale else 0
    for p in stale:
        p.write_text(render_page(p.read_text(), p.parent))
        print(f"rendered {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
