"""The study registry: every ``benchmarks/NAME.py`` with a ``main(argv)`` is the study ``NAME``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any


def benchmarks_dir() -> Path:
    """``benchmarks/`` of the source checkout (editable install), else of the working directory."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "benchmarks"
        if cand.is_dir() and (parent / "pyproject.toml").exists():
            return cand
    return Path.cwd() / "benchmarks"


def find_studies() -> dict[str, Path]:
    """Map study name -> file for every ``benchmarks/*.py`` that defines ``main``."""
    out = {}
    d = benchmarks_dir()
    if d.is_dir():
        for p in sorted(d.glob("*.py")):
            if not p.name.startswith("_") and "def main(" in p.read_text():
                out[p.stem] = p
    return out


def load_study(name: str):
    studies = find_studies()
    if name not in studies:
        raise SystemExit(f"unknown study {name!r}; available: {', '.join(studies) or '(none found)'}")
    spec = importlib.util.spec_from_file_location(f"doubleopt_study_{name}", studies[name])
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses (with postponed annotations) look their module up here
    spec.loader.exec_module(module)
    return module


def run_study(name: str, argv: list[str] | None = None) -> Any:
    """Run ``benchmarks/NAME.py``'s ``main(argv)``."""
    return load_study(name).main(argv or [])
