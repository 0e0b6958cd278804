r"""Adjoints: how ``solve`` differentiates the solution :math:`y^*(x)`.

* :class:`Unroll` backpropagates through every step the solver took (exact derivative of the
  algorithm; memory grows with the number of steps).
* :class:`Truncated` solves without a graph, then backpropagates through ``k`` further steps taken from
  the detached solution with a freshly initialized solver state (Bolte, Pauwels & Vaiter 2023, "One-step
  differentiation of iterative algorithms"; ``k=1`` is their one-step estimator). Memory is that of ``k``
  steps.
* :class:`Implicit` uses the implicit function theorem on the optimality conditions the problem declares,
  :math:`F(y^*; x) = 0` with :math:`F` = ``problem.optimality`` (the gradient :math:`\nabla_y s` for smooth
  problems, the proximal gradient mapping for composite ones, see :meth:`doubleopt.Problem.optimality`):

  .. math:: \frac{\partial y^*}{\partial \theta} = -J^{-1} \frac{\partial F}{\partial \theta},
     \qquad J = \partial_y F(y^*; x) \quad (= \nabla^2_{yy} s \text{ for smooth problems}),

  for every tensor :math:`\theta` the objective depends on (context tensors, problem parameters,
  tensors the objective closes over). The backward pass solves :math:`J^\top v = \bar y` per instance with
  :class:`CG` (Hessian-vector products, matrix-free; symmetric :math:`J`), :class:`GMRES` (vector-Jacobian
  products, any :math:`J`), or a dense :class:`Cholesky` / :class:`LU` solve (small ``n``). Memory is
  independent of the number of steps. Problems whose optimality conditions involve more than :math:`y`
  (a QP's KKT conditions involve its multipliers) differentiate themselves through
  :meth:`doubleopt.Problem.implicit_solution`, which every implicit adjoint calls first.
* :class:`~doubleopt.adjoint.Neumann` and :class:`~doubleopt.adjoint.FixedPoint` approximate
  :math:`(J^\top)^{-1}` by fixed-point iterations (a truncated Neumann series) instead of a linear solve.

An adjoint has one job; no solver looks at which adjoint is in use.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .._iterate import LoopOutput, iterate, replace_rows
from .._solution import RESULTS
from .._tree import tree_map
from ..linalg import batched_cg, batched_gmres


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
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"Truncated(k) needs an integer k >= 1, got {self.k!r}")

    def run(self, problem, solver, x, y0, **loop_kwargs):
        with torch.no_grad():
            out = iterate(problem, solver, x, y0, **loop_kwargs)
        if not torch.is_grad_enabled():
            return out
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
            # a fresh solver state at y*: a state carried over from the solve holds y*'s gradient without a graph,
            # which would make the first differentiable step's derivative that of the identity
            tail = iterate(problem, solver, x, out.y.detach(), **kw)
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
class GMRES:
    """Matrix-free restarted GMRES on Jacobian-transpose products, for optimality residuals whose Jacobian is not
    symmetric (composite problems' gradient mapping).

    Args:
        rtol: relative residual tolerance per instance.
        restart: Krylov basis size per cycle.
        max_iter: cap on matrix-vector products (default ``max(10 n, 50)``).
    """

    rtol: float = 1e-8
    restart: int = 30
    max_iter: int | None = None


@dataclass(frozen=True)
class Cholesky:
    """Dense solve with the full Hessian (``n`` batched Hessian-vector products), for small ``n``.
    Falls back to an LU solve for instances whose Hessian is not positive definite."""


@dataclass(frozen=True)
class LU:
    """Dense LU solve with the full Jacobian of the optimality residual (``n`` batched vector-Jacobian products),
    for small ``n`` and non-symmetric residual Jacobians."""


@dataclass
class AdjointMemory:
    """What an implicit adjoint keeps between backward passes, when given one (``Implicit(memory=...)``).

    The outer loop of bilevel optimization passes one so that each adjoint linear solve starts from the
    previous outer step's solution (CG, GMRES and fixed-point iterations) and reports its cost.
    """

    v: Tensor | None = None  # (B, n) the last adjoint solution, the next solve's starting point
    matvecs: int = 0  # Jacobian-vector products in the last backward pass
    residual: float = math.nan  # largest relative residual ||J^T v - u|| / ||u|| of the last solve (nan: unknown)
    solves: int = 0  # backward passes so far

    def start(self, u: Tensor) -> Tensor | None:
        v = self.v
        return v if v is not None and v.shape == u.shape and v.dtype == u.dtype else None

    def record(self, v: Tensor, matvecs: int, residual: float) -> None:
        self.v, self.matvecs, self.residual, self.solves = v.detach(), matvecs, residual, self.solves + 1


class ImplicitBase(AbstractAdjoint):
    """Shared ``run`` of the adjoints that differentiate the declared optimality conditions: solve without a graph,
    then ``y = y* + correction`` whose backward pass is ``u -> -(J^T)^{-1} u`` (approximated by
    :meth:`inverse_transpose`) pushed through :math:`F(y^*; x)` = ``problem.optimality`` to every tensor it
    depends on. Problems that differentiate themselves (``problem.implicit_solution``) are used as they are."""

    def inverse_transpose(self, problem, y: Tensor, x, u: Tensor) -> Tensor:
        """``v`` with :math:`(\\partial_y F)^\\top v \\approx u` per instance."""
        raise NotImplementedError

    def check_problem(self, problem) -> None:
        """Raise ``ValueError`` if this adjoint cannot differentiate ``problem``'s optimality residual."""

    def run(self, problem, solver, x, y0, **loop_kwargs):
        with torch.no_grad():
            out = iterate(problem, solver, x, y0, **loop_kwargs)
        if not torch.is_grad_enabled():
            return out
        y_star = out.y.detach()
        y_own = problem.implicit_solution(y_star, out.state, x)
        if y_own is not None:  # e.g. a QP: differentiated through its KKT conditions by the problem itself
            return replace(out, y=y_own)
        self.check_problem(problem)
        # instances that failed (non-finite) are differentiated on a finite donor's detached inputs and return
        # their y* as a constant: their NaN must not reach shared parameters through the backward pass
        failed = out.result == RESULTS.nonfinite
        ok = torch.nonzero(~failed).flatten()
        if bool(failed.any()):
            if len(ok) == 0:
                return out
            donor = int(ok[0])
            x, y_star = replace_rows(x, failed, donor), replace_rows(y_star, failed, donor)
        with torch.enable_grad():
            F = problem.optimality(y_star, x)
        if not _depends_on_more_than(F, y_star):  # nothing the objective depends on requires grad
            return out
        y = y_star + _ImplicitCorrection.apply(F, problem, x, y_star, self.inverse_transpose)
        if bool(failed.any()):
            y = torch.where(failed[:, None], out.y.detach(), y)
        return replace(out, y=y)


@dataclass(frozen=True)
class Implicit(ImplicitBase):
    """Implicit differentiation of the declared optimality conditions (see the module docstring).

    Args:
        linear_solver: :class:`CG` (default where the residual is a gradient: the Jacobian is the Hessian),
            :class:`GMRES` (default otherwise), :class:`Cholesky` or :class:`LU` (dense, small ``n``).
        memory: an :class:`AdjointMemory` to warm-start each linear solve from the previous one and record its
            cost (used by ``do.bilevel.optimize``); ``None`` starts from zero.

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

    linear_solver: CG | GMRES | Cholesky | LU | None = None
    memory: AdjointMemory | None = field(default=None, compare=False, repr=False)

    def solver_for(self, problem) -> CG | GMRES | Cholesky | LU:
        """The linear solver used for ``problem`` (the default depends on whether its Jacobian is symmetric)."""
        if self.linear_solver is not None:
            return self.linear_solver
        return CG() if problem.optimality_is_gradient else GMRES()

    def check_problem(self, problem) -> None:
        ls = self.solver_for(problem)
        if isinstance(ls, CG | Cholesky) and not problem.optimality_is_gradient:
            raise ValueError(
                f"Implicit({type(ls).__name__}()) needs a symmetric Jacobian, but the optimality residual of "
                f"{type(problem).__name__} is not a gradient (composite problems use the gradient mapping); "
                "use do.Implicit() (GMRES) or do.Implicit(do.LU())"
            )

    def inverse_transpose(self, problem, y, x, u):
        return solve_adjoint(problem, y, x, u, self.solver_for(problem), self.memory)


def _depends_on_more_than(F: Tensor, y: Tensor) -> bool:
    """Whether ``F``'s graph reaches a tensor that requires grad other than (a detached copy of) ``y``: an
    autograd gradient makes its own leaf from ``y``, which alone is no reason to differentiate."""
    if not F.requires_grad:
        return False
    seen, stack = set(), [F.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)  # an AccumulateGrad node: a leaf
        if variable is not None:
            if variable.data_ptr() != y.data_ptr() or variable.shape != y.shape:
                return True
            continue
        stack.extend(f for f, _ in fn.next_functions)
    return False


class _ImplicitCorrection(torch.autograd.Function):
    """Forward: zeros. Backward: ``u -> -inverse(problem, y*, x, u)``, an (approximate) ``-(J^T)^{-1} u`` with
    ``J`` the Jacobian of the optimality residual, which autograd then pushes through ``F`` (``inverse``: a
    linear solve for Implicit, fixed-point iterations for Neumann / FixedPoint)."""

    @staticmethod
    def forward(ctx, F, problem, x, y_star, inverse):
        ctx.problem, ctx.x, ctx.inverse = problem, x, inverse
        ctx.save_for_backward(y_star)
        return torch.zeros_like(F)

    @staticmethod
    def backward(ctx, u):
        (y_star,) = ctx.saved_tensors
        x = tree_map(lambda t: t.detach(), ctx.x)
        return -ctx.inverse(ctx.problem, y_star, x, u), None, None, None, None


def residual_vjp(problem, y: Tensor, x):
    """``(yv, p -> J^T p)``: vector-Jacobian products of ``problem.optimality`` at ``y`` (one backward each)."""
    yv = y.detach().requires_grad_(True)
    F = problem.optimality(yv, x)

    def vjp(p: Tensor) -> Tensor:
        (jp,) = torch.autograd.grad(F, yv, p, retain_graph=True)
        return jp

    return yv, F, vjp


def _dense_transpose_jacobian(yv: Tensor, F: Tensor) -> Tensor:
    n = yv.shape[-1]
    eye = torch.eye(n, dtype=yv.dtype, device=yv.device)
    basis = eye[:, None, :].expand(n, yv.shape[0], n)
    (cols,) = torch.autograd.grad(F, yv, basis, is_grads_batched=True)
    return cols.permute(1, 2, 0)  # column i is J^T e_i: the matrix J^T


def solve_adjoint(problem, y: Tensor, x, u: Tensor, linear_solver, memory: AdjointMemory | None = None) -> Tensor:
    """Solve :math:`(\\partial_y F)^\\top v = u` per instance, :math:`F` = ``problem.optimality`` (for smooth
    problems the Hessian system :math:`\\nabla^2 s\\, v = u`)."""
    u = u.detach()
    with torch.enable_grad():
        yv, F, vjp = residual_vjp(problem, y, x)
        if isinstance(linear_solver, Cholesky | LU):
            M = _dense_transpose_jacobian(yv, F)
            v = _dense_solve(M, u, symmetric=isinstance(linear_solver, Cholesky))
            if memory is not None:
                rel = _relative_residual(M, v, u)
                memory.record(v, y.shape[-1], rel)
            return v
        x0 = memory.start(u) if memory is not None else None
        if isinstance(linear_solver, GMRES):
            res = batched_gmres(vjp, u, x0=x0, rtol=linear_solver.rtol, restart=linear_solver.restart,
                                max_iter=linear_solver.max_iter)
        else:
            res = batched_cg(vjp, u, x0=x0, rtol=linear_solver.rtol, max_iter=linear_solver.max_iter)
    if memory is not None:
        unorm = torch.linalg.vector_norm(u, dim=-1).clamp_min(torch.finfo(u.dtype).tiny)
        memory.record(res.solution, res.iterations, float((res.residual_norm / unorm).max()) if len(u) else 0.0)
    if not bool(res.converged.all()):
        idx = torch.nonzero(~res.converged).flatten().tolist()
        name = type(linear_solver).__name__
        warnings.warn(
            f"Implicit adjoint: {name} did not converge for instances {idx[:10]} (residual up to "
            f"{float(res.residual_norm.max()):.2e}); the Jacobian of the optimality residual may be singular or "
            "ill-conditioned, consider a dense solve (Implicit(do.Cholesky()) or Implicit(do.LU()))",
            RuntimeWarning,
            stacklevel=3,
        )
    return res.solution


def _relative_residual(M: Tensor, v: Tensor, u: Tensor) -> float:
    if len(u) == 0:
        return 0.0
    r = torch.linalg.vector_norm((M @ v[..., None])[..., 0] - u, dim=-1)
    return float((r / torch.linalg.vector_norm(u, dim=-1).clamp_min(torch.finfo(u.dtype).tiny)).max())


def _dense_solve(M: Tensor, u: Tensor, symmetric: bool) -> Tensor:
    if symmetric:
        M = 0.5 * (M + M.transpose(-1, -2))
        L, info = torch.linalg.cholesky_ex(M)
        v = torch.cholesky_solve(u[..., None], L)[..., 0]
        bad = info != 0
    else:
        v = torch.zeros_like(u)
        bad = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
    if bool(bad.any()):
        lu_v = torch.linalg.solve_ex(M[bad], u[bad][..., None])
        if bool((lu_v.info != 0).any()):
            idx = torch.nonzero(bad).flatten()[lu_v.info != 0].tolist()
            raise RuntimeError(
                f"Implicit adjoint: the Jacobian of the optimality residual at the solution is singular for "
                f"instances {idx[:10]}; the implicit derivative does not exist there"
            )
        v = v.clone()
        v[bad] = lu_v.result[..., 0]
    return v

