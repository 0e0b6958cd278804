r"""Adjoints: how ``solve`` differentiates the solution :math:`y^*(x)`.

* :class:`Unroll` backpropagates through every step the solver took (exact derivative of the
  algorithm; memory grows with the number of steps).
* :class:`Truncated` solves without a graph, then backpropagates through ``k`` further steps taken from
  the detached solution (Bolte, Pauwels & Vaiter 2023, "One-step differentiation of iterative
  algorithms"; ``k=1`` is their one-step estimator). Memory is that of ``k`` steps.
* :class:`Implicit` uses the implicit function theorem on the stationarity condition
  :math:`\nabla_y s(y^*; x) = 0`:

  .. math:: \frac{\partial y^*}{\partial \theta} = -H^{-1} \frac{\partial \nabla_y s}{\partial \theta},
     \qquad H = \nabla^2_{yy} s(y^*; x),

  for every tensor :math:`\theta` the objective depends on (context tensors, problem parameters,
  tensors the objective closes over). The backward pass solves :math:`H v = \bar y` per instance with
  :class:`CG` (Hessian-vector products, matrix-free) or :class:`Cholesky` (dense Hessian, small ``n``).
  Memory is independent of the number of steps. A problem whose solutions are not characterized by
  :math:`\nabla_y s = 0` (a constrained problem, e.g. :class:`~doubleopt.problems.QPProblem`) may define
  ``implicit_solution(y_star, state, x) -> y``, which returns ``y_star`` made differentiable through its own
  optimality conditions (for QPs, the KKT conditions); ``Implicit`` then uses it instead.

An adjoint has one job; no solver looks at which adjoint is in use.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .._iterate import LoopOutput, iterate
from .._tree import tree_detach, tree_map
from ..linalg import batched_cg


class AbstractAdjoint:
    """Base class: ``run`` executes the loop and returns a :class:`LoopOutput` with a differentiable ``y``."""

    def run(self, problem, solver, x, y0, **loop_kwargs) -> LoopOutput:
        raise NotImplementedError


@dataclass(frozen=True)
class Unroll(AbstractAdjoint):
    """Differentiate through every solver step (autograd over the whole loop)."""

    def run(self, problem, solver, x, y0, **loop_kwargs):
        with torch.enable_grad():
            return iterate(problem, solver, x, y0, **loop_kwargs)


@dataclass(frozen=True)
class Truncated(AbstractAdjoint):
    """Solve without a graph, then differentiate through ``k`` more steps from the solution.

    Args:
        k: number of differentiable steps (>= 1).
    """

    k: int = 1

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"Truncated(k) needs k >= 1, got {self.k}")

    def run(self, problem, solver, x, y0, **loop_kwargs):
        with torch.no_grad():
            out = iterate(problem, solver, x, y0, **loop_kwargs)
        if not torch.is_grad_enabled():
            return out
        from .._solution import RESULTS

        frozen = out.result == RESULTS.nonfinite
        kw = dict(
            loop_kwargs,
            max_steps=self.k,
            tol=-1.0,
            rtol=0.0,
            trace=False,
            progress=False,
            done0=frozen,
            result0=out.result,
        )
        with torch.enable_grad():
            tail = iterate(problem, solver, x, out.y.detach(), state0=tree_detach(out.state), **kw)
        return replace(out, y=tail.y, state=tail.state)


@dataclass(frozen=True)
class CG:
    """Matrix-free conjugate gradient on Hessian-vector products (the Hessian must be positive definite).

    Args:
        rtol: relative residual tolerance per instance.
        max_iter: iteration cap (default ``max(10 n, 50)``).
    """

    rtol: float = 1e-8
    max_iter: int | None = None


@dataclass(frozen=True)
class Cholesky:
    """Dense solve with the full Hessian (``n`` batched Hessian-vector products), for small ``n``.
    Falls back to an LU solve for instances whose Hessian is not positive definite."""


@dataclass(frozen=True)
class Implicit(AbstractAdjoint):
    """Implicit differentiation of the stationarity condition (see the module docstring).

    Args:
        linear_solver: :class:`CG` (default) or :class:`Cholesky`.

    Example:
        >>> import torch, doubleopt as do
        >>> fam = do.problems.RidgeRegression(n_features=3, n_points=20, dtype=torch.float64)
        >>> x = fam.sample(2, seed=0)
        >>> x.targets.requires_grad_(True)  # doctest: +ELLIPSIS
        tensor(...)
        >>> sol = do.solve(fam, do.LBFGS(), x, tol=1e-10, adjoint=do.Implicit())
        >>> sol.y.sum().backward()
        >>> x.targets.grad.shape
        torch.Size([2, 20])
    """

    linear_solver: CG | Cholesky = field(default_factory=CG)

    def run(self, problem, solver, x, y0, **loop_kwargs):
        with torch.no_grad():
            out = iterate(problem, solver, x, y0, **loop_kwargs)
        if not torch.is_grad_enabled():
            return out
        y_star = out.y.detach()
        hook = getattr(problem, "implicit_solution", None)
        if hook is not None:  # constrained problems differentiate their own optimality (KKT) conditions
            return replace(out, y=hook(y_star, out.state, x))
        with torch.enable_grad():
            _, g = problem.smooth_value_and_grad(y_star, x)
        if not g.requires_grad:  # nothing the objective depends on requires grad
            return out
        if problem.is_composite:
            raise NotImplementedError(
                f"Implicit() does not differentiate composite problems ({type(problem).__name__}: f = smooth + g); "
                "use adjoint=do.Unroll() or do.Truncated(k)"
            )
        inverse = functools.partial(inverse_hessian_product, linear_solver=self.linear_solver)
        y = y_star + _ImplicitCorrection.apply(g, problem, x, y_star, inverse)
        return replace(out, y=y)


class _ImplicitCorrection(torch.autograd.Function):
    """Forward: zeros. Backward: ``u -> -inverse(problem, y*, x, u)``, an (approximate) ``-H^{-1} u``, which autograd
    then pushes through ``g = grad s`` (``inverse``: a linear solve for Implicit, a Neumann series for Neumann)."""

    @staticmethod
    def forward(ctx, g, problem, x, y_star, inverse):
        ctx.problem, ctx.x, ctx.inverse = problem, x, inverse
        ctx.save_for_backward(y_star)
        return torch.zeros_like(g)

    @staticmethod
    def backward(ctx, u):
        (y_star,) = ctx.saved_tensors
        x = tree_map(lambda t: t.detach(), ctx.x)
        return -ctx.inverse(ctx.problem, y_star, x, u), None, None, None, None


def inverse_hessian_product(problem, y: Tensor, x, u: Tensor, linear_solver) -> Tensor:
    """Solve :math:`\\nabla^2 s(y; x)\\, v = u` per instance (used by the implicit adjoint)."""
    with torch.enable_grad():
        yv = y.detach().requires_grad_(True)
        _, g = problem.smooth_value_and_grad(yv, x)
        if isinstance(linear_solver, Cholesky):
            n = y.shape[-1]
            eye = torch.eye(n, dtype=y.dtype, device=y.device)
            basis = eye[:, None, :].expand(n, y.shape[0], n)
            (cols,) = torch.autograd.grad(g, yv, basis, is_grads_batched=True)
            H = cols.permute(1, 2, 0)
            H = 0.5 * (H + H.transpose(-1, -2))
            L, info = torch.linalg.cholesky_ex(H)
            v = torch.cholesky_solve(u[..., None], L)[..., 0]
            bad = info != 0
            if bool(bad.any()):
                lu_v = torch.linalg.solve_ex(H[bad], u[bad][..., None])
                if bool((lu_v.info != 0).any()):
                    idx = torch.nonzero(bad).flatten()[lu_v.info != 0].tolist()
                    raise RuntimeError(
                        f"Implicit adjoint: the Hessian at the solution is singular for instances "
                        f"{idx[:10]}; the implicit derivative does not exist there"
                    )
                v = v.clone()
                v[bad] = lu_v.result[..., 0]
            return v

        def matvec(p: Tensor) -> Tensor:
            (hp,) = torch.autograd.grad(g, yv, p, retain_graph=True)
            return hp

        res = batched_cg(matvec, u.detach(), rtol=linear_solver.rtol, max_iter=linear_solver.max_iter)
    if not bool(res.converged.all()):
        idx = torch.nonzero(~res.converged).flatten().tolist()
        warnings.warn(
            f"Implicit adjoint: CG did not converge for instances {idx[:10]} (residual up to "
            f"{float(res.residual_norm.max()):.2e}); the Hessian may be indefinite or ill-conditioned, "
            "consider Implicit(linear_solver=do.Cholesky())",
            RuntimeWarning,
            stacklevel=3,
        )
    return res.solution
