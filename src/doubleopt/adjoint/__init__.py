"""Differentiation modes for ``doubleopt.solve``: objects, not flags."""

from ._adjoints import (
    CG,
    GMRES,
    LU,
    AbstractAdjoint,
    AdjointMemory,
    Cholesky,
    Implicit,
    ImplicitBase,
    Truncated,
    Unroll,
)
from .fixed_point import FixedPoint, Neumann

__all__ = [
    "AbstractAdjoint",
    "ImplicitBase",
    "Unroll",
    "Truncated",
    "Implicit",
    "Neumann",
    "FixedPoint",
    "AdjointMemory",
    "CG",
    "GMRES",
    "Cholesky",
    "LU",
]
