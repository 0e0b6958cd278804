"""Differentiation modes for ``doubleopt.solve``: objects, not flags."""

from ._adjoints import CG, AbstractAdjoint, Cholesky, Implicit, Truncated, Unroll
from .neumann import Neumann

__all__ = ["AbstractAdjoint", "Unroll", "Truncated", "Implicit", "CG", "Cholesky", "Neumann"]
