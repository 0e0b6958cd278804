"""Start-up consistency check: every rank of a data-parallel run must hold the same configuration, shapes and
code, or the ranks would silently compute different things (and, with collectives, hang or diverge)."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ._comm import Comm


@functools.cache
def code_digest() -> str:
    """SHA-256 (first 16 hex digits) of doubleopt's Python source files: two processes with the same digest run
    the same library code.

    Example:
        >>> len(code_digest()), code_digest() == code_digest()
        (16, True)
    """
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def tensor_digest(tensors: list[torch.Tensor]) -> str:
    """SHA-256 (first 16 hex digits) of the dtypes, shapes and bytes of ``tensors``: equal tensors, equal digest.

    Example:
        >>> tensor_digest([torch.zeros(2)]) == tensor_digest([torch.zeros(2)]) != tensor_digest([torch.ones(2)])
        True
    """
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run_identity(**values: Any) -> dict[str, str]:
    """``values`` as ``{name: JSON text}``, plus ``code`` (:func:`code_digest`) and ``torch`` (its version):
    what :func:`check_same` compares across ranks."""
    out = {k: json.dumps(v, sort_keys=True, default=str) for k, v in values.items()}
    out.setdefault("code", json.dumps(code_digest()))
    out.setdefault("torch", json.dumps(torch.__version__))
    return out


def check_same(
    comm: Comm,
    values: dict[str, Any],
    *,
    what: str = "run's configuration",
    hint: str = "launch every process with the same arguments and the same doubleopt code",
) -> None:
    """Raise ``ValueError`` on every rank if ``values`` (JSON-serializable, by name) differ between ranks.

    The message names each differing entry with its value on rank 0 and on the first rank that differs, e.g.
    ``seed is 0 on rank 0 but 1 on rank 1``, then ``hint``. Code versions are compared through :func:`code_digest` (pass
    ``values`` through :func:`run_identity` to include it). Nothing is communicated with one process.

    Example:
        >>> check_same(Comm(), run_identity(seed=0, shape=[3, 4]))  # one process: nothing to compare
    """
    if comm.world == 1:
        return
    mine = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in values.items()}
    texts = comm.gather_text(json.dumps(mine, sort_keys=True))
    tables = [json.loads(t) for t in texts]
    diffs = []
    for key in sorted(set().union(*tables)):
        ref = tables[0].get(key, "(missing)")
        for r, table in enumerate(tables[1:], start=1):
            other = table.get(key, "(missing)")
            if other != ref:
                diffs.append(f"{key} is {ref} on rank 0 but {other} on rank {r}")
                break
    if diffs:
        raise ValueError(f"the {what} differs across the {comm.world} processes: {'; '.join(diffs)} ({hint})")
