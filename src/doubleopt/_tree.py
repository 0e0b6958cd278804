"""Tiny helpers over the structures doubleopt passes around.

Contexts ``x`` and solver states are a ``Tensor``, ``None``, or a (possibly nested) dataclass, tuple, list
or dict of tensors. Tensors that are *batched* have the batch dimension first. Non-tensor leaves (ints,
floats, strings) are carried unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def tree_map(fn: Callable[[Tensor], Any], tree: Any) -> Any:
    """Apply ``fn`` to every tensor leaf of ``tree``, rebuilding the same structure."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {f.name: tree_map(fn, getattr(tree, f.name)) for f in dataclasses.fields(tree) if f.init}
        return dataclasses.replace(tree, **changes)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(tree_map(fn, t) for t in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(fn, t) for t in tree)
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    return tree


def tree_map2(fn: Callable[[Tensor, Tensor], Any], a: Any, b: Any) -> Any:
    """Apply ``fn`` leafwise to two trees of the same structure."""
    if isinstance(a, Tensor):
        return fn(a, b)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        changes = {
            f.name: tree_map2(fn, getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a) if f.init
        }
        return dataclasses.replace(a, **changes)
    if isinstance(a, tuple) and hasattr(a, "_fields"):
        return type(a)(*(tree_map2(fn, s, t) for s, t in zip(a, b)))
    if isinstance(a, (tuple, list)):
        return type(a)(tree_map2(fn, s, t) for s, t in zip(a, b))
    if isinstance(a, dict):
        return {k: tree_map2(fn, a[k], b[k]) for k in a}
    return a


def tree_tensors(tree: Any) -> list[Tensor]:
    """All tensor leaves of ``tree`` in a deterministic order."""
    out: list[Tensor] = []
    tree_map(lambda t: out.append(t), tree)
    return out


def tree_unflatten(tree: Any, leaves: list[Tensor]) -> Any:
    """Rebuild ``tree`` with its tensor leaves replaced, in :func:`tree_tensors` order."""
    it = iter(leaves)
    return tree_map(lambda _t: next(it), tree)


def tree_where(mask: Tensor, new: Any, old: Any) -> Any:
    """Per-instance select: leaves of ``new`` where ``mask`` (shape ``(B,)``) is True, ``old`` elsewhere.

    Leaves whose leading dimension is not ``B`` (or scalars) are taken from ``new``.
    """
    B = mask.shape[0]

    def pick(n: Tensor, o: Tensor) -> Tensor:
        if n.dim() == 0 or n.shape[0] != B or n.shape != o.shape:
            return n
        m = mask.reshape((B,) + (1,) * (n.dim() - 1))
        return torch.where(m, n, o)

    return tree_map2(pick, new, old)


def tree_index(tree: Any, index: Tensor) -> Any:
    """Select instances ``index`` (along the leading dimension) from every batched leaf."""
    return tree_map(lambda t: t[index] if t.dim() > 0 else t, tree)


def tree_index_copy(tree: Any, index: Tensor, sub: Any) -> Any:
    """``tree`` with instances ``index`` replaced by ``sub`` (a :func:`tree_index` of it, updated), out of place."""
    return tree_map2(lambda t, u: t.index_copy(0, index, u) if t.dim() > 0 else t, tree, sub)


def tree_detach(tree: Any) -> Any:
    return tree_map(lambda t: t.detach(), tree)
