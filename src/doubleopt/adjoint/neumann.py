r"""Neumann-series implicit adjoint (Lorraine, Vicol & Duvenaud, AISTATS 2020).

Like :class:`~doubleopt.Implicit`, it differentiates the stationarity condition
:math:`\nabla_y s(y^*; x) = 0`, but replaces the inverse Hessian by a truncated Neumann series:

.. math:: H^{-1} \approx \alpha \sum_{j=0}^{k} (I - \alpha H)^j, \qquad H = \nabla^2_{yy} s(y^*; x),

evaluated with ``k`` Hessian-vector products per backward pass (no linear solve, no convergence test).
If the eigenvalues of :math:`H` lie in :math:`[\mu, L]` with :math:`0 < \alpha L < 2`, the error of the
approximate inverse-Hessian product is bounded by

.. math:: \| v_k - H^{-1} u \| \le \rho^{k+1} \| H^{-1} u \|, \qquad \rho = \max(|1 - \alpha\mu|, |1 - \alpha L|) < 1,

so the hypergradient converges geometrically to the implicit one as ``k`` grows. With
:math:`\alpha L \ge 2` the series diverges; choose ``scale <= 1 / L``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .._iterate import iterate
from ._adjoints import AbstractAdjoint, _ImplicitCorrection


@dataclass(frozen=True)
class Neumann(AbstractAdjoint):
    """Implicit differentiation with a ``terms``-term Neumann series for the inverse Hessian.

    Args:
        terms: ``k >= 0``, the number of Hessian-vector products per backward pass (``k = 0`` gives
            :math:`\\alpha I`, a scaled identity in place of :math:`H^{-1}`).
        scale: :math:`\\alpha > 0`; the series converges when :math:`\\alpha < 2 / L` for the largest
            Hessian eigenvalue :math:`L` (see the module docstring for the error bound).

    Example:
        >>> import torch, doubleopt as do
        >>> fam = do.problems.RidgeRegression(n_features=3, n_points=20, dtype=torch.float64)
        >>> x = fam.sample(2, seed=0)
        >>> x.targets.requires_grad_(True)  # doctest: +ELLIPSIS
        tensor(...)
        >>> sol = do.solve(fam, do.LBFGS(), x, tol=1e-10, adjoint=do.Neumann(terms=20, scale=0.1))
        >>> sol.y.sum().backward()
        >>> x.targets.grad.shape
        torch.Size([2, 20])
    """

    terms: int = 10
    scale: float = 1.0

    def __post_init__(self):
        if isinstance(self.terms, bool) or not isinstance(self.terms, int) or self.terms < 0:
            raise ValueError(f"Neumann(terms) needs an integer terms >= 0, got {self.terms!r}")
        if not (float(self.scale) > 0) or not math.isfinite(float(self.scale)):
            raise ValueError(f"Neumann(scale) needs a finite scale > 0, got {self.scale!r}")

    def run(self, problem, solver, x, y0, **loop_kwargs):
        with torch.no_grad():
            out = iterate(problem, solver, x, y0, **loop_kwargs)
        if not torch.is_grad_enabled():
            return out
        y_star = out.y.detach()
        if problem.is_composite:
            raise NotImplementedError(
                f"Neumann() does not differentiate composite problems ({type(problem).__name__}: f = smooth + g); "
                "use adjoint=do.Unroll() or do.Truncated(k)"
            )
        with torch.enable_grad():
            _, g = problem.smooth_value_and_grad(y_star, x)
        if not g.requires_grad:  # nothing the objective depends on requires grad
            return out
        inverse = functools.partial(neumann_inverse_hessian_product, terms=self.terms, scale=float(self.scale))
        y = y_star + _ImplicitCorrection.apply(g, problem, x, y_star, inverse)
        return replace(out, y=y)


def neumann_inverse_hessian_product(problem, y: Tensor, x, u: Tensor, terms: int, scale: float) -> Tensor:
    r""":math:`\alpha \sum_{j=0}^{k} (I - \alpha H)^j u` per instance, with ``k`` Hessian-vector products."""
    with torch.enable_grad():
        yv = y.detach().requires_grad_(True)
        _, g = problem.smooth_value_and_grad(yv, x)
        p = u.detach()
        acc = p
        for _ in range(terms):
            (hp,) = torch.autograd.grad(g, yv, p, retain_graph=True)
            p = p - scale * hp
            acc = acc + p
    return scale * acc
