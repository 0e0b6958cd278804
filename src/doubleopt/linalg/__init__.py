"""Batched linear algebra used by the implicit adjoint and the interior-point solvers."""

from ._cg import CGResult, batched_cg

__all__ = ["batched_cg", "CGResult"]
