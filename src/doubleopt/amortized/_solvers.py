r"""Amortized models as solvers (DESIGN principle 7).

An amortized model is an ``nn.Module`` ``x -> y_hat`` trained over a family of contexts so that
:math:`\hat y_\theta(x) \approx y^\star(x) = \arg\min_y f(y; x)` (Amos 2023, "Tutorial on amortized
optimization"). Wrapped as a solver it runs through :func:`doubleopt.solve` like any other:

* :class:`FullyAmortized` ``(model)``: step 1 is the forward pass :math:`y_1 = \hat y_\theta(x)`. The
  instance succeeds if its certificate (gradient norm, gradient mapping, marginal error, KKT residual; see
  :mod:`doubleopt.amortized` certificates) is ``<= tol``; otherwise step 2 stops it with
  ``RESULTS.not_certified`` -- an amortized answer is never reported as a success without its check.
* :class:`SemiAmortized` ``(model, solver, steps=k)``: the prediction, then up to ``k`` steps of any core
  solver started from it, :math:`y_{t+1} = \mathrm{step}(y_t)`. Under ``adjoint=do.Unroll()`` the gradient
  flows through the refinement steps into the model's parameters (Kim et al. 2018, semi-amortized VAEs;
  Amos 2023, section 3), which is how :func:`~doubleopt.amortized.fit` trains it with the unrolled loss.

Example:
    >>> import torch, doubleopt as do
    >>> fam = do.problems.Quadratic(dim=3, dtype=torch.float64)
    >>> x = fam.sample(4, seed=0)
    >>> class Exact(torch.nn.Module):
    ...     def forward(self, x):
    ...         return torch.linalg.solve(x.A, x.b)
    >>> sol = do.solve(fam, do.amortized.FullyAmortized(Exact()), x, tol=1e-8)
    >>> sol.summary(), int(sol.num_steps[0])
    ('4 successful', 1)
    >>> semi = do.amortized.SemiAmortized(torch.nn.Linear(1, 1), do.GD(lr=0.1), steps=5)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from .._problem import batch_size
from .._solution import RESULTS
from ..solvers._base import Solver
from ._certificates import Certificate, default_certificate


@dataclass
class AmortizedState:
    """Amortized solver state. ``phase``: 0 before the prediction is taken, then 1 + refinement steps."""

    value: Tensor  # (B,)
    grad: Tensor  # (B, n) smooth-part gradient at the current iterate
    residual: Tensor  # (B,) stationarity / certificate of the current iterate
    phase: Tensor  # (B,) int64
    status: Tensor  # (B,) RESULTS code (not_certified once nothing is left to do)
    prediction: Tensor  # (B, n) the model's output
    inner: Any = None  # the refinement solver's state


def predict(model: nn.Module, problem, x) -> Tensor:
    """``model(x)`` with its shape checked against the problem: ``(B, n)``."""
    y = model(x)
    B = batch_size(x)
    n = problem.dim
    if not isinstance(y, Tensor) or y.dim() != 2 or y.shape[0] != B or (n and y.shape[1] != n):
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(
            f"the amortized model {type(model).__name__} must return a (B, n) = ({B}, {n or 'n'}) "
            f"tensor for {type(problem).__name__}, got {shape}"
        )
    return y


@dataclass(frozen=True)
class SemiAmortized(Solver):
    """Predict with ``model`` then refine with up to ``steps`` steps of ``solver`` (see module docstring).

    Args:
        model: ``nn.Module`` mapping a batch of contexts to ``(B, n)`` predictions.
        solver: any core solver (``do.GD``, ``do.Adam``, ``do.LBFGS``, ``do.ISTA``,
            ``do.solvers.Sinkhorn``...).
        steps: refinement budget ``k >= 0`` (0 is :class:`FullyAmortized`).
        certificate: checks the raw prediction (default: the problem's natural certificate); after
            refinement steps the solver's own stationarity measure is used.

    It ignores ``y0`` (``uses_start = False``): ``do.solve`` does not compute ``problem.init(x)`` for it.
    """

    uses_start = False
    model: nn.Module
    solver: Solver | None = None
    steps: int = 0
    certificate: Certificate | None = None
    supports_composite = True

    def __post_init__(self):
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"model must be an nn.Module mapping contexts to (B, n), got {type(self.model).__name__}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {self.steps!r}")
        if self.steps > 0 and self.solver is None:
            raise ValueError("SemiAmortized with steps > 0 needs a refinement solver")

    @property
    def loop_compact_below(self) -> float:  # type: ignore[override]
        """The refinement solver's loop compaction (the amortized state is batch-first around it)."""
        return float(getattr(self.solver, "loop_compact_below", 0.0)) if self.solver is not None else 0.0

    def check_problem(self, problem) -> None:
        if self.solver is not None:
            self.solver.check_problem(problem)

    def _certify(self, problem, y, x) -> Tensor:
        cert = self.certificate or default_certificate(problem)
        return cert(problem, y, x)

    def init(self, problem, y, x):
        y_hat = predict(self.model, problem, x)
        B = y_hat.shape[0]
        residual = self._certify(problem, y_hat, x)
        inner = None
        if self.solver is not None:
            inner = self.solver.init(problem, y_hat, x)
            value, grad = self.solver.current_value(inner), inner.grad
        else:
            value, grad = problem.value_and_grad(y_hat, x)
            if problem.is_composite:
                value = value + problem.nonsmooth(y_hat, x)
        z = torch.zeros(B, dtype=torch.int64, device=y_hat.device)
        return AmortizedState(value, grad, residual, z, z, y_hat, inner)

    def step(self, problem, y, x, state):
        phase = int(state.phase.max())
        if phase == 0:
            return state.prediction, replace(state, phase=state.phase + 1)
        if self.solver is not None and phase <= self.steps:
            y_new, inner = self.solver.step(problem, y, x, state.inner)
            status = getattr(inner, "status", None)
            status = torch.zeros_like(state.status) if status is None else status
            residual = self.solver.stationarity(problem, y_new, x, inner)
            return y_new, AmortizedState(
                self.solver.current_value(inner),
                inner.grad,
                residual,
                state.phase + 1,
                status,
                state.prediction,
                inner,
            )
        status = torch.full_like(state.status, int(RESULTS.not_certified))
        return y, replace(state, status=status)

    def stationarity(self, problem, y, x, state):
        return torch.where(state.phase == 0, torch.full_like(state.residual, float("inf")), state.residual)

    def iterates(self, problem, x) -> list[Tensor]:
        """``[y_hat, y_1, ..., y_k]``: the prediction and every refinement iterate, with the autograd graph
        (for the unrolled loss). Runs exactly ``steps`` refinement steps (no stopping test)."""
        y = predict(self.model, problem, x)
        ys = [y]
        if self.solver is not None and self.steps > 0:
            inner = self.solver.init(problem, y, x)
            for _ in range(self.steps):
                y, inner = self.solver.step(problem, y, x, inner)
                ys.append(y)
        return ys


def FullyAmortized(model: nn.Module, certificate: Certificate | None = None) -> SemiAmortized:
    """A solver whose answer is the model's prediction, certified per instance (0-step ``SemiAmortized``).

    Example:
        >>> import torch, doubleopt as do
        >>> solver = do.amortized.FullyAmortized(torch.nn.Linear(4, 4))
        >>> solver.steps
        0
    """
    return SemiAmortized(model, None, 0, certificate)
