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
from typing import Any, Protocol

from torch import Tensor

from .._solver import Solver


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
