r"""The outer loop of bilevel optimization: hyperparameters by hypergradients.

.. math:: \min_\lambda F(\lambda) = L_{\mathrm{out}}(y^*(\lambda)), \qquad
   y^*(\lambda) = \arg\min_y f(y; \lambda, x),

where :math:`\lambda` are ``nn.Parameter`` s of the inner :class:`~doubleopt.Problem`. Each outer step solves
the inner problem to the step's tolerance (warm-started from the previous outer step's solution),
differentiates :math:`L_{\mathrm{out}}(y^*)` with the chosen adjoint (``do.Implicit()``, ``do.Neumann(k)``,
``do.Unroll()``, ``do.Truncated(k)``), giving the hypergradient

.. math:: \nabla F = -\Big(\frac{\partial \nabla_y f}{\partial \lambda}\Big)^{\!\top} H^{-1} \nabla_y L_{\mathrm{out}},
   \qquad H = \nabla^2_{yy} f(y^*; \lambda),

(for the implicit adjoints), and takes one step of a ``torch.optim`` optimizer on :math:`\lambda`.

Inexact hypergradients (HOAG, Pedregosa 2016): the inner tolerance :math:`\varepsilon_t` follows a
:class:`ToleranceSchedule`, loose early and tight late, and the implicit adjoints start each linear solve (CG,
GMRES, fixed-point iterations) from the previous outer step's adjoint (an
:class:`~doubleopt.adjoint.AdjointMemory`), so both inner and adjoint solves get cheaper as the outer loop
converges. An inexact hypergradient may point uphill; a step is therefore only kept if the next outer loss passes
HOAG's sufficient-decrease test with an allowance for the inexactness,

.. math:: F_{t+1} \le F_t + c\, (\varepsilon_t + \varepsilon_{t+1}) (1 + |F_t|),

(``descent_slack`` :math:`= c`). A step that fails it is rejected: the hyperparameters go back to where they
were, the outer optimizer restarts (its momentum dropped) with half the learning rate, the inner tolerance is
tightened ten-fold for the rest of the run (never below the schedule's floor), and the hypergradient is
recomputed from there. So no uphill step is kept, whether an inexact gradient or too long a step caused it.

Positivity: hyperparameters that must stay positive (L2 weights) are stored as their logarithm,
:math:`\lambda = \log w`, and the problem uses :math:`w = e^\lambda`; the outer loop then works on an
unconstrained :math:`\lambda` (see :class:`~doubleopt.bilevel.DigitsL2`).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from .._solution import RESULTS, Solution
from .._solve import solve
from ..adjoint import AdjointMemory, Unroll


@dataclass(frozen=True)
class ToleranceSchedule:
    r"""Inner tolerance of outer step ``t``: :math:`\max(\mathrm{end}, \mathrm{start} \cdot \mathrm{decay}^t)`,
    loose early and tight late (as in HOAG, Pedregosa 2016).

    Args:
        start: tolerance of the first outer step (> 0).
        end: the floor reached late in the run (0 < end <= start).
        decay: factor per outer step, in (0, 1].
    """

    start: float = 1e-3
    end: float = 1e-8
    decay: float = 0.7

    def __post_init__(self):
        if not (self.start > 0) or not (0 < self.end <= self.start):
            raise ValueError(f"ToleranceSchedule needs start >= end > 0, got start={self.start}, end={self.end}")
        if not (0 < self.decay <= 1):
            raise ValueError(f"ToleranceSchedule(decay) must be in (0, 1], got {self.decay}")

    def __call__(self, t: int) -> float:
        return max(self.end, self.start * self.decay**t)


@dataclass
class OuterStep:
    """The record of one outer step."""

    step: int
    outer_loss: float  # at the inner solution of this step (nan when skipped)
    inner_steps: int  # largest number of inner solver steps over the batch
    hypergrad_norm: float  # Euclidean norm over all hyperparameters (nan when skipped)
    tol: float  # inner tolerance used
    time: float  # seconds for the inner solve, the hypergradient and the update
    applied: bool  # whether the hyperparameters were updated
    failures: dict[int, str] = field(default_factory=dict)  # instance -> result code name, when skipped
    adjoint_matvecs: int | None = None  # Jacobian-vector products of the adjoint solve (None: not recorded)
    adjoint_residual: float = math.nan  # its largest relative residual (nan: not recorded)
    rejected_previous: bool = False  # this step's outer loss failed the descent test: the previous step was undone


@dataclass
class BilevelResult:
    """What :func:`optimize` returns."""

    history: list[OuterStep]
    solution: Solution | None  # the last successful inner solution (detached)
    stopped: str | None = None  # why the run stopped early, if it did

    @property
    def skipped(self) -> list[int]:
        return [r.step for r in self.history if not r.applied]

    @property
    def rejected(self) -> list[int]:
        """Outer steps whose update was undone by the descent test (see :func:`optimize`)."""
        return [r.step - 1 for r in self.history if r.rejected_previous]


def optimize(
    problem: nn.Module,
    solver,
    x,
    outer_loss: Callable[[Tensor], Tensor],
    hyperparams: Sequence[nn.Parameter],
    *,
    adjoint=None,
    outer_steps: int = 50,
    outer_lr: float = 0.1,
    optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
    tol: ToleranceSchedule | None = None,
    max_inner_steps: int = 1000,
    descent_slack: float | None = 1.0,
    max_skips: int = 3,
) -> BilevelResult:
    r"""Minimize ``outer_loss(y*(lambda))`` over ``hyperparams`` (see the module docstring for the math).

    Args:
        problem: the inner :class:`~doubleopt.Problem`; ``hyperparams`` are among the tensors it uses.
        solver (Solver): inner solver, e.g. ``do.LBFGS()``.
        x (Context): inner contexts (batch first).
        outer_loss: ``y -> scalar`` differentiable in ``y``, the outer objective.
        hyperparams: the tensors to optimize (``requires_grad``).
        adjoint (AbstractAdjoint | None): how to differentiate the inner solution (default ``do.Implicit()``).
        outer_steps: number of outer steps (>= 1).
        outer_lr: learning rate of the outer optimizer (> 0).
        optimizer: a ``torch.optim`` optimizer class, called as ``optimizer(hyperparams, lr=outer_lr)``.
        tol: the inner :class:`ToleranceSchedule`.
        max_inner_steps: inner step budget per outer step.
        max_skips: stop (with ``stopped`` set and a warning) after this many consecutive skipped steps: the
            hyperparameters do not move while steps are skipped, so more tries repeat the same failing solve.
        descent_slack: :math:`c` of the descent test (module docstring); ``None`` keeps every step (plain
            inexact hypergradient descent).

    An outer step whose inner solve does not succeed for some instance is skipped (recorded with the
    failing instances and their result codes; the hyperparameters are not updated). A non-finite outer loss
    or hypergradient stops the run with ``stopped`` set and a ``RuntimeWarning``, without applying it.

    Example:
        >>> import torch, doubleopt as do
        >>> class Ridge(do.Problem):
        ...     dim = 2
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.log_l2 = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        ...     def objective(self, y, x):
        ...         return 0.5 * ((y - x) ** 2).sum(-1) + 0.5 * self.log_l2.exp() * (y**2).sum(-1)
        >>> prob = Ridge()
        >>> x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
        >>> target = 0.5 * x  # reached at l2 = 1 (log_l2 = 0) ... start elsewhere:
        >>> _ = prob.log_l2.data.fill_(2.0)
        >>> res = do.bilevel.optimize(prob, do.LBFGS(), x, lambda y: ((y - target) ** 2).sum(),
        ...                           [prob.log_l2], outer_steps=100, outer_lr=0.1)
        >>> abs(float(prob.log_l2.detach())) < 0.05, res.history[-1].outer_loss < 1e-3
        (True, True)
    """
    hyperparams = list(hyperparams)
    if isinstance(outer_steps, bool) or not isinstance(outer_steps, int) or outer_steps < 1:
        raise ValueError(f"outer_steps must be an integer >= 1, got {outer_steps!r}")
    if not (float(outer_lr) > 0):
        raise ValueError(f"outer_lr must be > 0, got {outer_lr!r}")
    if not hyperparams or not all(isinstance(p, Tensor) and p.requires_grad for p in hyperparams):
        raise ValueError("hyperparams must be a non-empty sequence of tensors with requires_grad=True")
    if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 1:
        raise ValueError(f"max_skips must be an integer >= 1, got {max_skips!r}")
    if descent_slack is not None and not (float(descent_slack) >= 0):
        raise ValueError(f"descent_slack must be >= 0 or None, got {descent_slack!r}")
    tol = ToleranceSchedule() if tol is None else tol
    adjoint, memory = _with_memory(adjoint)
    # Unroll differentiates the path from the start: a warm start would cut the path (to nothing, once the
    # previous solution already meets the tolerance) and with it the hypergradient, so it starts cold
    unrolled = isinstance(adjoint, Unroll)
    opt = optimizer(hyperparams, lr=outer_lr)
    history: list[OuterStep] = []
    y_prev, last = None, None
    tighten = 1.0  # factor on the tolerance schedule, divided by 10 at each rejected step
    undo = None  # (hyperparameters, optimizer state, outer loss, tolerance) before the last applied step
    for t in range(outer_steps):
        start = time.perf_counter()
        tol_t = max(tol(t) * tighten, tol.end)
        opt.zero_grad(set_to_none=True)
        solves_before = memory.solves if memory is not None else 0
        y0 = None if unrolled else y_prev
        sol = solve(problem, solver, x, y0, adjoint=adjoint, max_steps=max_inner_steps, tol=tol_t, throw=False)
        inner_steps = int(sol.num_steps.max())
        bad = sol.result != int(RESULTS.successful)
        if bool(bad.any()):
            idx = torch.nonzero(bad).flatten().tolist()
            failures = {i: RESULTS(int(sol.result[i])).name for i in idx}
            history.append(
                OuterStep(t, math.nan, inner_steps, math.nan, tol_t, time.perf_counter() - start, False, failures)
            )
            recent = history[-max_skips:]
            if len(recent) == max_skips and all(r.failures for r in recent):
                msg = (
                    f"outer steps {recent[0].step}..{t}: the inner solve failed {max_skips} times in a row "
                    f"({failures}); the inner problem may have become ill-conditioned at these hyperparameters "
                    "(raise max_inner_steps or the tolerance floor, or bound the hyperparameters)"
                )
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                return BilevelResult(history, last, stopped=msg)
            continue
        loss = outer_loss(sol.y)
        record = OuterStep(t, float(loss.detach()), inner_steps, math.nan, tol_t, 0.0, False)
        history.append(record)
        if undo is not None and descent_slack is not None and math.isfinite(record.outer_loss):
            params0, loss0, tol0 = undo
            allowance = descent_slack * (tol0 + tol_t) * (1 + abs(loss0))
            if record.outer_loss > loss0 + allowance:  # the last step went uphill: undo it, then be more careful
                with torch.no_grad():
                    for p, p0 in zip(hyperparams, params0):
                        p.copy_(p0)
                lr = opt.param_groups[0]["lr"] * 0.5
                opt = optimizer(hyperparams, lr=lr)  # momentum that carried it uphill is dropped
                tighten *= 0.1
                record.rejected_previous, record.time = True, time.perf_counter() - start
                undo = None
                continue
        if not loss.requires_grad:
            raise ValueError(
                f"outer step {t}: the outer loss does not depend on the hyperparameters through the inner solution "
                "(no graph): outer_loss must be computed from its argument y, and the problem must use hyperparams"
            )
        loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in hyperparams]
        gnorm = float(torch.sqrt(sum((g.detach() ** 2).sum() for g in grads)))
        record.hypergrad_norm = gnorm
        if memory is not None and memory.solves > solves_before:
            record.adjoint_matvecs, record.adjoint_residual = memory.matvecs, memory.residual
        if not (math.isfinite(gnorm) and math.isfinite(record.outer_loss)):
            msg = (
                f"outer step {t}: non-finite outer loss ({record.outer_loss}) or hypergradient norm ({gnorm}); "
                "stopped without applying it"
            )
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            record.time = time.perf_counter() - start
            return BilevelResult(history, last, stopped=msg)
        if descent_slack is not None:
            params0 = [p.detach().clone() for p in hyperparams]
            undo = (params0, record.outer_loss, tol_t)
        opt.step()
        record.applied, record.time = True, time.perf_counter() - start
        y_prev = sol.y.detach()
        last = replace(sol, y=sol.y.detach())
    opt.zero_grad(set_to_none=True)
    return BilevelResult(history, last)


def _with_memory(adjoint):
    """``adjoint`` with an :class:`AdjointMemory` (warm-started adjoint solves) where it takes one and has none."""
    if adjoint is None:
        from ..adjoint import Implicit

        adjoint = Implicit()
    names = {f.name for f in dataclasses.fields(adjoint)} if dataclasses.is_dataclass(adjoint) else set()
    if "memory" not in names:
        return adjoint, None
    if adjoint.memory is None:
        adjoint = replace(adjoint, memory=AdjointMemory())
    return adjoint, adjoint.memory
