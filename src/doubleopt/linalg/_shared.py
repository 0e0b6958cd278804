"""Batched matrix-vector products that keep a matrix shared by the batch shared.

A matrix shared by a batch is stored as an ``expand`` ed view ``(B, r, c)`` with stride 0 along the batch.
``M @ v[..., None]`` on such a view runs B tiny GEMVs (and some operations materialize the B copies);
these helpers run one GEMM ``v @ M[0]^T`` instead. Used by the QP family and the interior-point solver.
"""

from __future__ import annotations

from torch import Tensor


def is_shared(M: Tensor) -> bool:
    """True if ``M (B, ...)`` is one matrix expanded over a batch of more than one (stride 0 along dim 0)."""
    return M.dim() == 3 and M.shape[0] > 1 and M.stride(0) == 0


def bmv(M: Tensor, v: Tensor) -> Tensor:
    """``M v`` per instance, ``M (B, r, c)`` (possibly shared), ``v (B, c)`` -> ``(B, r)``."""
    if is_shared(M):
        return v @ M[0].transpose(0, 1)
    return (M @ v[..., None])[..., 0]  # a batched GEMV on M's own layout (~1.5x faster than v^T M^T)


def bmtv(M: Tensor, v: Tensor) -> Tensor:
    """``M^T v`` per instance, ``M (B, r, c)`` (possibly shared), ``v (B, r)`` -> ``(B, c)``."""
    if is_shared(M):
        return v @ M[0]
    return (v[:, None, :] @ M)[:, 0]


def sym(Q: Tensor) -> Tensor:
    """The symmetric part ``(Q + Q^T) / 2`` per instance; a shared ``Q`` stays a shared view."""
    if is_shared(Q):
        Q0 = Q[0]
        return (0.5 * (Q0 + Q0.transpose(0, 1))).expand_as(Q)
    return 0.5 * (Q + Q.transpose(-1, -2))
