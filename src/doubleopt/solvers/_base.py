"""The solver protocol and the adapter through which gradient-only update rules enter.

A solver is frozen configuration. Its state is a dataclass of tensors whose batched fields have the
batch dimension first; every state has ``value`` ``(B,)`` and ``grad`` ``(B, n)`` at the current iterate
and may have ``status`` ``(B,)`` holding a :class:`~doubleopt.RESULTS` code per instance (non-zero stops
that instance with that code). ``step`` is out-of-place, so it is differentiable.

Writing a custom solver::

    @dataclass(frozen=True)
    class MySolver(do.solvers.Solver):
        step_size: float = 0.1
        def init(self, problem, y, x):
            value, grad = problem.value_and_grad(y, x)
            return do.solvers.GradientState(value, grad)
        def step(self, problem, y, x, state):
            y = y - self.step_size * state.grad
            return y, do.solvers.GradientState(*problem.value_and_grad(y, x))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from .._tree import tree_index

if TYPE_CHECKING:
    from .._problem import Context, Problem


def check_setting(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    """Refuse a solver setting that is not a finite real number (an ``int`` where ``integer``) inside the given
    bounds, with a ``ValueError`` naming it (NaN, inf, ``bool`` and strings are refused).

    Example:
        >>> check_setting("c1", 0.5, low=0, high=1, low_open=True, high_open=True)
        >>> check_setting("memory", 0, low=1, integer=True)
        Traceback (most recent call last):
        ...
        ValueError: memory must be an integer >= 1, got 0
    """
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    want = " ".join(["an integer" if integer else "a number", " and ".join(bounds)]).strip()
    ok = isinstance(value, int if integer else int | float) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{name} must be {want}, got {value!r}")


@dataclass
class GradientState:
    """The minimal state: objective value and gradient at the current iterate."""

    value: Tensor
    grad: Tensor


@dataclass(frozen=True)
class Solver:
    """Base class of all solvers: ``init / step / stationarity / postprocess``.

    ``supports_composite`` says whether the solver handles ``f = s + g`` problems (proximal solvers);
    smooth solvers refuse composite problems with a clear error. ``uses_start = False`` says that the solver
    ignores ``y0`` (amortized solvers). ``loop_compact_below = r > 0`` lets the solve loop gather the
    unfinished instances once fewer than ``r`` of the batch remain (only for solvers whose state and context
    are batch-first and whose steps are per instance; see :func:`doubleopt._iterate.iterate`); the loop
    gathers the context with :meth:`take_context`.
    """

    supports_composite = False
    supports_smooth = True
    # False: the solver ignores y0 (an amortized solver predicts its own start), so do.solve's default y0
    # is a zero placeholder instead of problem.init(x), which may itself cost a solve (a QP's cold start)
    uses_start = True
    loop_compact_below = 0.0

    def check_problem(self, problem: Problem) -> None:
        name = type(self).__name__
        if problem.is_composite and not self.supports_composite:
            raise ValueError(
                f"{name} is a smooth solver but {type(problem).__name__} is composite (f = smooth + g); "
                "use a proximal solver such as do.ISTA() or do.FISTA()"
            )
        if not problem.is_composite and not self.supports_smooth:
            raise ValueError(f"{name} needs a composite problem (f = smooth + g with a prox)")

    def init(self, problem: Problem, y: Tensor, x: Context) -> Any:
        raise NotImplementedError

    def take_context(self, x: Context, index: Tensor) -> Context:
        """Instances ``index`` of the context ``x`` (loop compaction). Default: every batched leaf indexed;
        a solver overrides it to keep matrices shared by the batch shared or to carry per-solve constants."""
        return tree_index(x, index)

    def initial_iterate(self, problem: Problem, y: Tensor, x: Context, state: Any) -> Tensor:
        """The iterate the loop starts from, called once right after :meth:`init`. Default ``y``; a solver whose
        ``init`` already moved the instances (the QP's native kernel solves them there) returns where they are."""
        return y

    def step(self, problem: Problem, y: Tensor, x: Context, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def current_value(self, state: Any) -> Tensor:
        """Objective value at the current iterate, ``(B,)``."""
        return state.value

    def stationarity(self, problem: Problem, y: Tensor, x: Context, state: Any) -> Tensor:
        """Per-instance stationarity measure compared with ``tol`` (default: gradient 2-norm)."""
        return torch.linalg.vector_norm(state.grad, dim=-1)

    def postprocess(self, problem: Problem, y: Tensor, x: Context, state: Any, result: Tensor):
        return y, result


class UpdateRule(Protocol):
    """A gradient-only update rule (torch.optim-style or learned): ``y_new = y + delta``."""

    def init_rule(self, y: Tensor) -> Any: ...

    def update(self, grad: Tensor, rule_state: Any, y: Tensor) -> tuple[Tensor, Any]: ...


@dataclass
class RuleState:
    """The state of a :class:`GradientRuleSolver` between steps.

    Attributes:
        value: ``(B,)`` objective at the current iterate.
        grad: ``(B, n)`` gradient at the current iterate.
        rule: the update rule's own state (from :meth:`UpdateRule.init_rule`, then :meth:`UpdateRule.update`).
    """

    value: Tensor
    grad: Tensor
    rule: Any


@dataclass(frozen=True)
class GradientRuleSolver(Solver):
    """Adapter: turns a gradient-only :class:`UpdateRule` into a solver (one gradient per step).

    Every first-order solver (``GD``, ``Momentum``, ``Adam``, ...) and every learned optimizer enters the
    loop through this class, so all of them share stopping, result codes and adjoints.
    """

    def init_rule(self, y: Tensor) -> Any:
        raise NotImplementedError

    def update(self, grad: Tensor, rule_state: Any, y: Tensor) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def init(self, problem, y, x):
        value, grad = problem.value_and_grad(y, x)
        return RuleState(value, grad, self.init_rule(y))

    def step(self, problem, y, x, state):
        delta, rule_state = self.update(state.grad, state.rule, y)
        y = y + delta
        value, grad = problem.value_and_grad(y, x)
        return y, RuleState(value, grad, rule_state)
