"""Timing: warm-up, median of repeats, threads fixed and reported."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass
class Timing:
    """Wall times of repeated calls (seconds)."""

    median: float
    times: list[float]
    result: Any = None

    @property
    def min(self) -> float:
        return min(self.times)


def set_threads(n: int) -> int:
    """Fix torch's intra-op threads (and the BLAS threads of NumPy/SciPy via threadpoolctl)."""
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover
        pass
    os.environ["OMP_NUM_THREADS"] = str(n)
    return n


def time_call(fn: Callable[[], T], *, warmup: int = 1, repeats: int = 5) -> Timing:
    """Median wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    >>> t = time_call(lambda: sum(range(1000)), warmup=1, repeats=3)
    >>> t.median > 0 and len(t.times) == 3
    True
    """
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), times, result)


def time_to_epsilon(times: list[float] | torch.Tensor, errors: list[float] | torch.Tensor, eps: float) -> float:
    """First time at which ``errors`` drops to ``<= eps`` along a curve (``inf`` if never)."""
    for t, e in zip(list(map(float, times)), list(map(float, errors))):
        if e <= eps:
            return t
    return float("inf")


def source_revision() -> str:
    """The git commit of the source this study runs from (``+dirty`` with uncommitted changes), or
    ``doubleopt X.Y.Z`` for an installed copy outside a checkout."""
    import subprocess

    import doubleopt

    root = os.path.dirname(os.path.abspath(doubleopt.__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return head.stdout.strip()[:12] + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return f"doubleopt {getattr(doubleopt, '__version__', 'unknown')}"


def load_average() -> list[float] | None:
    """The 1- and 5-minute load averages (runnable processes) when the platform reports them: on a machine
    with ``cpu_count`` cores, a 1-minute load near the study's own thread count means nothing else ran."""
    try:
        return [round(v, 2) for v in os.getloadavg()[:2]]
    except (AttributeError, OSError):  # pragma: no cover - not on every platform
        return None


def conditions(**extra: Any) -> dict[str, Any]:
    """The conditions every report records: when, from which source, threads, machine load, versions.

    ``load_avg_1m_5m`` is read when the study calls this (usually at its start); :meth:`Report.save` adds the
    load at the end, so a run shared with other work shows it.
    """
    import datetime

    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "source": source_revision(),
        "load_avg_1m_5m": load_average(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        **extra,
    }


def field_help(args_cls: type) -> dict[str, str]:
    """Each field's ``#`` comment in the dataclass source (``name: type = default  # help``), by field name."""
    try:
        lines = inspect.getsource(args_cls).splitlines()
    except (OSError, TypeError):  # no source (e.g. built interactively)
        return {}
    names = {f.name for f in dataclasses.fields(args_cls)}
    helps: dict[str, str] = {}
    for line in lines:
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m and m.group(1) in names and m.group(1) not in helps:
            helps[m.group(1)] = m.group(2).strip()
    return helps


def parse_args(args_cls: type[T], argv: list[str] | None = None, description: str | None = None) -> T:
    """Build an argparse parser from a dataclass of arguments (``--field-name value``; bools as flags).

    Each field's help text is its ``#`` comment in the dataclass source; ``--help`` shows it with the default.
    """
    parser = argparse.ArgumentParser(
        description=description or inspect.cleandoc(args_cls.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    helps = field_help(args_cls)
    for f in dataclasses.fields(args_cls):
        name = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        own = helps.get(f.name, "").replace("%", "%%")
        text = (own + " (default: %(default)s)").strip()
        if isinstance(default, bool):
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=own or None)
        elif isinstance(default, (list, tuple)):
            elem = type(default[0]) if default else str
            parser.add_argument(name, nargs="+", type=elem, default=list(default), help=text)
        else:
            parser.add_argument(name, type=type(default) if default is not None else str, default=default, help=text)
    ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return args_cls(**vars(ns))
