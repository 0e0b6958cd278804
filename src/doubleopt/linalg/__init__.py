"""Batched linear algebra used by the implicit adjoint and the interior-point solvers."""

from ._cg import CGResult, batched_cg
from ._gmres import batched_gmres

__all__ = ["batched_cg", "batched_gmres", "CGResult"]
