"""Batched problems ``f(y; x)`` and problem families.

A :class:`Problem` is a batch of optimization instances: ``y`` has shape ``(B, n)`` and the context ``x``
(a tensor or a dataclass of tensors, batch dimension first) holds one context per instance. The objective
returns one value per instance, shape ``(B,)``. Problems are ``nn.Module`` s, so anything learnable the
objective depends on (a dictionary, a QP's matrices) is a parameter, and the implicit adjoint
differentiates with respect to it as well as with respect to the context tensors.

Composite problems ``f(y; x) = s(y; x) + g(y; x)`` (``s`` smooth, ``g`` with a cheap proximal operator)
set ``is_composite = True`` and implement :meth:`Problem.nonsmooth` and :meth:`Problem.prox`; proximal
solvers (ISTA, FISTA) use them, smooth solvers refuse such problems.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._tree import tree_tensors

Context = Any  # Tensor | dataclass of tensors | None


@dataclass
class EvalCounts:
    """Batch-wide evaluation counters (one batched call counts once)."""

    f_evals: int = 0
    grad_evals: int = 0
    hvp_evals: int = 0


_COUNTS: contextvars.ContextVar[EvalCounts | None] = contextvars.ContextVar("doubleopt_counts", default=None)


@contextlib.contextmanager
def count_evaluations():
    """Context manager that counts objective / gradient evaluations made inside it."""
    counts = EvalCounts()
    token = _COUNTS.set(counts)
    try:
        yield counts
    finally:
        _COUNTS.reset(token)


def _count(f: int = 0, g: int = 0, h: int = 0) -> None:
    c = _COUNTS.get()
    if c is not None:
        c.f_evals += f
        c.grad_evals += g
        c.hvp_evals += h


class Problem(nn.Module):
    """A batch of optimization problems ``min_y f(y; x)``.

    Subclasses set ``dim`` (the size ``n`` of ``y``) and implement :meth:`objective` (or, for composite
    problems, :meth:`smooth`, :meth:`nonsmooth` and :meth:`prox`). They may override
    :meth:`smooth_value_and_grad` with an analytic gradient; it must stay written in differentiable torch
    operations so that the unrolled and implicit adjoints can differentiate through it.

    Example:
        >>> import torch, doubleopt as do
        >>> class Sphere(do.Problem):
        ...     dim = 3
        ...     def objective(self, y, x):
        ...         return ((y - x) ** 2).sum(-1)
        >>> sol = do.solve(Sphere(), do.LBFGS(), torch.ones(4, 3), tol=1e-8)
        >>> torch.allclose(sol.y, torch.ones(4, 3), atol=1e-6)
        True
    """

    dim: int = 0
    is_composite: bool = False

    # ---- what subclasses implement -------------------------------------------------------------
    def objective(self, y: Tensor, x: Context) -> Tensor:
        """The full objective ``f(y; x)``, shape ``(B,)``."""
        if self.is_composite:
            return self.smooth(y, x) + self.nonsmooth(y, x)
        raise NotImplementedError(f"{type(self).__name__} must implement objective(y, x)")

    def smooth(self, y: Tensor, x: Context) -> Tensor:
        """The smooth part ``s(y; x)`` (the whole objective for non-composite problems)."""
        if self.is_composite:
            raise NotImplementedError(f"{type(self).__name__} is composite and must implement smooth(y, x)")
        return self.objective(y, x)

    def nonsmooth(self, y: Tensor, x: Context) -> Tensor:
        """The non-smooth part ``g(y; x)`` of a composite problem, shape ``(B,)``."""
        return y.new_zeros(y.shape[0])

    def prox(self, y: Tensor, x: Context, step: Tensor) -> Tensor:
        """``prox_{step * g}(y) = argmin_z g(z) + ||z - y||^2 / (2 step)``; ``step`` has shape ``(B,)``."""
        if not self.is_composite:
            return y
        raise NotImplementedError(f"{type(self).__name__} must implement prox(y, x, step)")

    def init(self, x: Context) -> Tensor:
        """Default starting point ``y0`` for contexts ``x`` (zeros unless overridden)."""
        B = batch_size(x)
        t = _first_tensor(x)
        dtype = t.dtype if t is not None and t.is_floating_point() else torch.get_default_dtype()
        device = t.device if t is not None else None
        return torch.zeros(B, self.dim, dtype=dtype, device=device)

    def check_context(self, x: Context) -> None:
        """Raise ``ValueError`` if ``x`` is malformed for this problem (subclasses add checks)."""

    def lipschitz_constant(self, x: Context) -> Tensor | None:
        """A Lipschitz constant of :math:`\\nabla_y s` (scalar or ``(B,)``), or ``None`` if unknown (the default).

        Proximal solvers take their step from it (else they backtrack); composite problems' :meth:`optimality`
        uses it for the gradient-mapping step."""
        return None

    # ---- what the implicit adjoints differentiate ----------------------------------------------
    @property
    def optimality_is_gradient(self) -> bool:
        """Whether :meth:`optimality` is the gradient of the smooth part (its Jacobian is then the symmetric
        Hessian, and ``do.Implicit`` can use CG). Subclasses that override :meth:`optimality` set it ``False``
        unless their residual is a gradient."""
        return not self.is_composite

    def optimality(self, y: Tensor, x: Context) -> Tensor:
        r"""The optimality residual :math:`F(y; x)`, shape ``(B, n)``, zero exactly at the solutions.

        ``do.Implicit`` / ``do.Neumann`` / ``do.FixedPoint`` differentiate it: at a solution,
        :math:`\partial y^*/\partial\theta = -(\partial_y F)^{-1}\, \partial_\theta F`. The default is

        * the gradient :math:`\nabla_y s(y; x)` for smooth problems (:math:`\partial_y F` is the Hessian);
        * the gradient mapping :math:`G_t(y) = \big(y - \mathrm{prox}_{t g}(y - t \nabla_y s(y; x))\big) / t`
          with :math:`t = 1/L` (:meth:`lipschitz_constant`, else :math:`t = 1`) for composite problems: zero iff
          :math:`0 \in \nabla s(y) + \partial g(y)`, differentiable wherever the proximal map is (for the
          LASSO: away from the kinks of the soft threshold, i.e. when no coordinate is exactly at its
          threshold).

        It must be written in differentiable torch operations (in ``y``, the context and the parameters).
        """
        _, grad = self.smooth_value_and_grad(y, x)
        if not self.is_composite:
            return grad
        lip = self.lipschitz_constant(x)
        B = y.shape[0]
        L = y.new_ones(B) if lip is None else torch.as_tensor(lip).to(y).expand(B)
        step = 1.0 / L
        return (y - self.prox(y - grad * step[:, None], x, step)) * L[:, None]

    def implicit_solution(self, y_star: Tensor, state: Any, x: Context) -> Tensor | None:
        """For problems whose optimality conditions involve more than ``y`` (a QP's KKT conditions involve its
        multipliers, which the solver keeps in ``state``): return ``y_star`` made differentiable through those
        conditions. ``None`` (the default) lets the implicit adjoints differentiate :meth:`optimality`."""
        return None

    def smooth_value_and_grad(self, y: Tensor, x: Context) -> tuple[Tensor, Tensor]:
        """``(s(y; x), grad_y s(y; x))`` by autograd. Override with an analytic gradient for speed."""
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            yv = y if (create_graph and y.requires_grad) else y.detach().requires_grad_(True)
            f = self.smooth(yv, x)
            (g,) = torch.autograd.grad(f.sum(), yv, create_graph=create_graph)
        if not create_graph:
            f = f.detach()
        return f, g

    # ---- what solvers call (counted) -----------------------------------------------------------
    def value(self, y: Tensor, x: Context) -> Tensor:
        """The full objective, counted as one function evaluation."""
        _count(f=1)
        return self.objective(y, x)

    def smooth_value(self, y: Tensor, x: Context) -> Tensor:
        _count(f=1)
        return self.smooth(y, x)

    def value_and_grad(self, y: Tensor, x: Context) -> tuple[Tensor, Tensor]:
        """Value and gradient of the smooth part (the whole objective unless composite)."""
        _count(f=1, g=1)
        return self.smooth_value_and_grad(y, x)

    def hvp(self, y: Tensor, x: Context, v: Tensor, *, create_graph: bool = False) -> Tensor:
        """Hessian-vector products of the smooth part, batched: ``(B, n)`` for ``v`` of shape ``(B, n)``."""
        _count(h=1)
        with torch.enable_grad():
            yv = y.detach().requires_grad_(True)
            _, g = _grad_with_graph(self, yv, x)
            (hv,) = torch.autograd.grad(g, yv, v, create_graph=create_graph)
        return hv

    def hessian(self, y: Tensor, x: Context) -> Tensor:
        """Dense Hessians of the smooth part, ``(B, n, n)`` (n batched Hessian-vector products)."""
        n = y.shape[-1]
        with torch.enable_grad():
            yv = y.detach().requires_grad_(True)
            _, g = _grad_with_graph(self, yv, x)
            eye = torch.eye(n, dtype=y.dtype, device=y.device)
            basis = eye[:, None, :].expand(n, y.shape[0], n)
            (cols,) = torch.autograd.grad(g, yv, basis, is_grads_batched=True)
        _count(h=n)
        H = cols.permute(1, 2, 0)
        return 0.5 * (H + H.transpose(-1, -2))

    def forward(self, y: Tensor, x: Context) -> Tensor:
        return self.objective(y, x)


def _grad_with_graph(problem: Problem, yv: Tensor, x: Context) -> tuple[Tensor, Tensor]:
    """The smooth part's value and gradient with a graph (through an analytic ``smooth_value_and_grad`` where the
    problem has one, which is what its Hessian-vector products then differentiate)."""
    with torch.enable_grad():
        return problem.smooth_value_and_grad(yv, x)


class ProblemFamily(Problem):
    """A problem with a distribution over contexts: :meth:`sample` draws a batch of ``x``.

    Sampling takes an explicit ``torch.Generator`` (or ``seed``) so the same seed gives the same batch.
    """

    def sample(self, batch_size: int, *, generator: torch.Generator | None = None, seed: int | None = None):
        """Draw ``batch_size`` contexts."""
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        return self._sample(batch_size, generator)

    def _sample(self, batch_size: int, generator: torch.Generator):
        raise NotImplementedError


def _first_tensor(x: Context) -> Tensor | None:
    ts = tree_tensors(x)
    return ts[0] if ts else None


def batch_size(x: Context) -> int:
    """The batch size of a context: the leading dimension of its tensors (which must agree)."""
    ts = [t for t in tree_tensors(x) if t.dim() > 0]
    if not ts:
        raise ValueError("the context x holds no batched tensor, so the batch size is unknown; pass y0")
    sizes = {t.shape[0] for t in ts}
    if len(sizes) != 1:
        raise ValueError(f"context tensors disagree on the batch size (leading dims {sorted(sizes)})")
    return sizes.pop()
