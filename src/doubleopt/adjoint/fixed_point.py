r"""Fixed-point implicit adjoints: a truncated Neumann series in place of the linear solve.

Like :class:`~doubleopt.Implicit`, they differentiate the declared optimality conditions
:math:`F(y^*; x) = 0` (``problem.optimality``), but approximate the adjoint :math:`v = (J^\top)^{-1} u`,
:math:`J = \partial_y F(y^*; x)`, by the fixed-point iteration

.. math:: v_{j+1} = v_j - \alpha\,(J^\top v_j - u),

one vector-Jacobian product per iteration, no convergence test. From :math:`v_0 = 0`, ``k + 1`` iterations
give the Neumann series :math:`\alpha \sum_{j=0}^{k} (I - \alpha J^\top)^j u` (Lorraine, Vicol & Duvenaud,
AISTATS 2020), :class:`Neumann`; :class:`FixedPoint` runs the same iteration from the previous backward
pass's solution when given an :class:`~doubleopt.adjoint.AdjointMemory` (the "fixed-point" hypergradient of
Grazzi et al., ICML 2020, warm-started across outer steps). For smooth problems :math:`J` is the Hessian
:math:`H`; if its eigenvalues lie in :math:`[\mu, L]` with :math:`0 < \alpha L < 2`,

.. math:: \| v_j - v^* \| \le \rho^{j} \| v_0 - v^* \|, \qquad \rho = \max(|1 - \alpha\mu|, |1 - \alpha L|) < 1,

so the hypergradient converges geometrically to the implicit one. With :math:`\alpha L \ge 2` the series
diverges; choose ``scale <= 1 / L``. For a composite problem, whose residual is the gradient mapping with step
:math:`1/L`, ``scale = 1 / L`` makes the iteration the adjoint of the proximal gradient (ISTA) map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._adjoints import AdjointMemory, ImplicitBase, residual_vjp


def _check_scale(name: str, scale) -> None:
    if not (float(scale) > 0) or not math.isfinite(float(scale)):
        raise ValueError(f"{name}(scale) needs a finite scale > 0, got {scale!r}")


@dataclass(frozen=True)
class Neumann(ImplicitBase):
    """Implicit differentiation with a ``terms``-term Neumann series for the inverse Jacobian.

    Args:
        terms: ``k >= 0``, the number of vector-Jacobian (for smooth problems Hessian-vector) products per
            backward pass (``k = 0`` gives :math:`\\alpha I`, a scaled identity in place of :math:`H^{-1}`).
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
        _check_scale("Neumann", self.scale)

    def inverse_transpose(self, problem, y, x, u):
        return fixed_point_adjoint(problem, y, x, u, self.terms + 1, float(self.scale))


@dataclass(frozen=True)
class FixedPoint(ImplicitBase):
    """Implicit differentiation with ``iterations`` fixed-point iterations on the adjoint equation, started from
    the previous backward pass's adjoint when ``memory`` holds one (else from zero: then it equals
    ``Neumann(terms=iterations - 1)``).

    Args:
        iterations: ``k >= 1`` iterations, each one vector-Jacobian product (plus one to report the residual
            when ``memory`` is given).
        scale: :math:`\\alpha > 0`, as for :class:`Neumann`.
        memory: an :class:`~doubleopt.adjoint.AdjointMemory` carried across backward passes.

    Example:
        >>> import torch, doubleopt as do
        >>> fam = do.problems.RidgeRegression(n_features=3, n_points=20, dtype=torch.float64)
        >>> x = fam.sample(2, seed=0)
        >>> x.targets.requires_grad_(True)  # doctest: +ELLIPSIS
        tensor(...)
        >>> memory = do.adjoint.AdjointMemory()
        >>> for _ in range(3):  # each backward pass continues from the last one's adjoint
        ...     sol = do.solve(fam, do.LBFGS(), x, tol=1e-10,
        ...                    adjoint=do.FixedPoint(iterations=10, scale=0.1, memory=memory))
        ...     sol.y.sum().backward()
        >>> memory.solves, memory.residual < 1e-2
        (3, True)
    """

    iterations: int = 10
    scale: float = 1.0
    memory: AdjointMemory | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"FixedPoint(iterations) needs an integer iterations >= 1, got {self.iterations!r}")
        _check_scale("FixedPoint", self.scale)

    def inverse_transpose(self, problem, y, x, u):
        return fixed_point_adjoint(problem, y, x, u, self.iterations, float(self.scale), self.memory)


def fixed_point_adjoint(
    problem, y: Tensor, x, u: Tensor, iterations: int, scale: float, memory: AdjointMemory | None = None
) -> Tensor:
    r"""``iterations`` steps of :math:`v \leftarrow v - \alpha (J^\top v - u)` per instance, from
    ``memory``'s last adjoint if it has one, else from zero (whose first step costs no product)."""
    u = u.detach()
    with torch.enable_grad():
        _, _, vjp = residual_vjp(problem, y, x)
        v = memory.start(u) if memory is not None else None
        matvecs = 0
        if v is None:
            v, iterations = scale * u, iterations - 1
        for _ in range(iterations):
            v = v - scale * (vjp(v) - u)
            matvecs += 1
        if memory is not None:
            r = torch.linalg.vector_norm(vjp(v) - u, dim=-1)
            unorm = torch.linalg.vector_norm(u, dim=-1).clamp_min(torch.finfo(u.dtype).tiny)
            memory.record(v, matvecs + 1, float((r / unorm).max()) if len(u) else 0.0)
    return v
