r"""Per-instance optimality certificates: a residual ``r(y; x) >= 0`` per instance, zero at a solution.

* :class:`GradientNorm`: :math:`\|\nabla f(y; x)\|_2` for smooth problems; for composite problems
  :math:`f = s + g` the gradient-mapping norm :math:`\|y - \mathrm{prox}_{t g}(y - t\nabla s(y))\|_2 / t`
  with :math:`t = 1/L` (the problem's ``lipschitz_constant``), which is zero iff :math:`0 \in \partial f(y)`.
* :class:`MarginalError`: :math:`\|P\mathbf{1} - a\|_1 + \|P^\top\mathbf{1} - b\|_1` of the transport plan
  a dual potential defines (entropic OT).
* :class:`KKTResidual`: the largest of the primal residual, dual residual and complementarity (duality
  gap) of a QP primal-dual point, from the QP problem's own ``kkt_residuals``.

A certificate is a frozen dataclass with ``__call__(problem, y, x) -> (B,)``; non-finite inputs give ``inf``
(never a pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Certificate:
    """Base class: ``residual = certificate(problem, y, x)``, shape ``(B,)``; pass iff ``residual <= tol``."""

    def residual(self, problem, y: Tensor, x) -> Tensor:
        raise NotImplementedError

    def __call__(self, problem, y: Tensor, x) -> Tensor:
        with torch.no_grad():
            r = self.residual(problem, y.detach(), x)
        return torch.where(torch.isfinite(r), r, torch.full_like(r, float("inf")))


@dataclass(frozen=True)
class GradientNorm(Certificate):
    """Gradient norm (smooth) or gradient-mapping norm with step ``1/L`` (composite). See module docstring."""

    def residual(self, problem, y, x):
        if problem.is_composite and problem.lipschitz_constant(x) is None:
            raise ValueError(
                f"GradientNorm on the composite problem {type(problem).__name__} needs its "
                "lipschitz_constant(x) to define the gradient mapping"
            )
        return torch.linalg.vector_norm(problem.optimality(y, x), dim=-1)


@dataclass(frozen=True)
class MarginalError(Certificate):
    """L1 marginal violation of the entropic OT plan defined by the potential ``y = f``."""

    def residual(self, problem, y, x):
        if not hasattr(problem, "marginal_error"):
            raise ValueError(f"MarginalError needs an entropic OT problem, got {type(problem).__name__}")
        return problem.marginal_error(y, x)


@dataclass(frozen=True)
class KKTResidual(Certificate):
    """Max of primal residual, dual residual and duality gap of a QP primal-dual point (QP problems)."""

    def residual(self, problem, y, x):
        fn = getattr(problem, "kkt_residual", None)
        if fn is None:
            raise ValueError(f"KKTResidual needs a QP problem with kkt_residual(y, x), got {type(problem).__name__}")
        return fn(y, x)


def default_certificate(problem) -> Certificate:
    """The natural certificate of a problem: marginal error for OT, KKT for QPs, else gradient norm."""
    if hasattr(problem, "marginal_error"):
        return MarginalError()
    if hasattr(problem, "kkt_residual"):
        return KKTResidual()
    return GradientNorm()
