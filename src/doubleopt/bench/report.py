"""Reports: results as JSON, a markdown table and a PNG plot under ``bench_results/NAME/``."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def markdown_table(rows: list[dict[str, Any]], floatfmt: str = ".4g") -> str:
    """Render a list of dicts (same keys) as a markdown table."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "inf" if math.isinf(v) else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Report:
    """Collects a study's rows and writes ``results.json``, ``table.md`` and ``NAME.png``.

    Example:
        >>> import tempfile
        >>> r = Report("demo", out_dir=tempfile.mkdtemp())
        >>> r.add_row(method="a", time_s=0.5)
        >>> p = r.save({"note": "x"})
        >>> sorted(q.name for q in p.iterdir())
        ['results.json', 'table.md']
    """

    def __init__(self, name: str, out_dir: str | os.PathLike | None = None):
        self.name = name
        self.dir = Path(out_dir) if out_dir is not None else Path("bench_results") / name
        self.rows: list[dict[str, Any]] = []

    def add_row(self, **row: Any) -> None:
        self.rows.append(row)

    def table(self) -> str:
        return markdown_table(self.rows)

    def save(self, data: dict[str, Any] | None = None, figure: Any = None) -> Path:
        from .timing import load_average

        payload = {"name": self.name, "rows": self.rows, **(data or {})}
        if isinstance(payload.get("conditions"), dict):
            payload["conditions"] = {**payload["conditions"], "load_avg_1m_5m_at_end": load_average()}
        _atomic_write(self.dir / "results.json", json.dumps(payload, indent=2, default=float).encode())
        _atomic_write(self.dir / "table.md", (self.table() + "\n").encode())
        if figure is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            figure.savefig(self.dir / f"{self.name}.png", dpi=110, bbox_inches="tight")
            import matplotlib.pyplot as plt

            plt.close(figure)
        return self.dir
