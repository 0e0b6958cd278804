"""The study registry: every module ``doubleopt.bench.studies.NAME`` with a ``main(argv)`` is the study ``NAME``.

The studies ship inside the package, so an installed wheel lists and runs the same studies as a source checkout.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

from . import studies as _studies

PACKAGE = _studies.__name__


def study_names() -> list[str]:
    """The modules of :mod:`doubleopt.bench.studies` (not ``_private``), sorted; each is imported only when used."""
    return sorted(m.name for m in pkgutil.iter_modules(_studies.__path__) if not m.name.startswith("_"))


def find_studies() -> dict[str, ModuleType]:
    """Map study name -> module for every module of :mod:`doubleopt.bench.studies` that defines ``main``.

    Example:
        >>> "solvers" in find_studies()
        True
    """
    out = {}
    for name in study_names():
        module = importlib.import_module(f"{PACKAGE}.{name}")
        if callable(getattr(module, "main", None)):
            out[name] = module
    return out


def load_study(name: str) -> ModuleType:
    """The module of study ``name`` (``doubleopt.bench.studies.NAME``); a ``ValueError`` naming the available
    studies for an unknown name."""
    names = study_names()
    if name not in names:
        raise ValueError(f"unknown study {name!r}; available: {', '.join(names) or '(none found)'}")
    module = importlib.import_module(f"{PACKAGE}.{name}")
    if not callable(getattr(module, "main", None)):
        raise ValueError(f"{PACKAGE}.{name} is not a study (it has no main(argv))")
    return module


def run_study(name: str, argv: list[str] | None = None) -> Any:
    """Run study ``name``'s ``main(argv)`` (``doubleopt.bench.studies.NAME``)."""
    return load_study(name).main(argv or [])
