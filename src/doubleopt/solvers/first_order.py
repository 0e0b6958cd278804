r"""First-order update rules, batched over instances, matching ``torch.optim`` step for step.

All of them enter the loop through :class:`~doubleopt.solvers.GradientRuleSolver`. Per-instance step
counters (``(B,)`` tensors) keep bias corrections right when instances stop at different steps.

Example:
    >>> import torch, doubleopt as do
    >>> fam = do.problems.Quadratic(dim=5, condition_number=10.0)
    >>> x = fam.sample(8, seed=0)
    >>> sol = do.solve(fam, do.Adam(lr=0.05), x, max_steps=3000, tol=1e-4, throw=False)
    >>> bool(sol.successful.all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._base import GradientRuleSolver, GradientState, Solver, check_setting
from .linesearch import armijo_backtracking


def _sqrt(v: Tensor) -> Tensor:
    """``v.sqrt()`` whose derivative at ``v = 0`` is 0 instead of inf (a coordinate whose gradients were all 0):
    autograd's ``inf * 0`` there would turn an unrolled solve's gradient into NaN. Same values; the double
    ``where`` keeps the inf out of the backward pass."""
    if not (v.requires_grad and torch.is_grad_enabled()):
        return v.sqrt()
    pos = v > 0
    return torch.where(pos, torch.where(pos, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
    if not ok or not (value > 0 or (allow_zero and value == 0)) or value == float("inf"):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value!r}")


@dataclass
class ArmijoGDState(GradientState):
    step_size: Tensor  # (B,) last accepted step, the next trial starts from it (x 2)
    status: Tensor


@dataclass(frozen=True)
class GD(GradientRuleSolver):
    r"""Gradient descent :math:`y_{k+1} = y_k - \eta \nabla f(y_k)`.

    Args:
        lr: the fixed step size :math:`\eta` (ignored with ``line_search=True``).
        line_search: Armijo backtracking per instance: the step halves until
            :math:`f(y - t g) \le f(y) - c_1 t \|g\|^2`; the next step starts from twice the last one.
        c1: Armijo constant.
    """

    lr: float = 1e-2
    line_search: bool = False
    c1: float = 1e-4

    def __post_init__(self):
        _check_positive("lr", self.lr)
        check_setting("c1", self.c1, low=0, high=1, low_open=True, high_open=True)

    def init_rule(self, y):
        return None

    def update(self, grad, rule_state, y):
        return -self.lr * grad, None

    def init(self, problem, y, x):
        if not self.line_search:
            return super().init(problem, y, x)
        value, grad = problem.value_and_grad(y, x)
        B = y.shape[0]
        return ArmijoGDState(
            value,
            grad,
            torch.full((B,), self.lr, dtype=y.dtype, device=y.device),
            torch.zeros(B, dtype=torch.int64, device=y.device),
        )

    def step(self, problem, y, x, state):
        if not self.line_search:
            return super().step(problem, y, x, state)
        ls = armijo_backtracking(problem, x, y, state.value, state.grad, -state.grad, state.step_size, c1=self.c1)
        return ls.y, ArmijoGDState(ls.value, ls.grad, ls.step * 2.0, ls.status)


@dataclass
class MomentumRuleState:
    buf: Tensor


@dataclass(frozen=True)
class Momentum(GradientRuleSolver):
    r"""Heavy-ball momentum as in ``torch.optim.SGD(momentum=mu, dampening=0)``.

    :math:`b_{k+1} = \mu b_k + g_k + \lambda y_k,\ y_{k+1} = y_k - \eta b_{k+1}`
    (``nesterov=True``: :math:`y_{k+1} = y_k - \eta (g_k + \mu b_{k+1})`).
    """

    lr: float = 1e-2
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self):
        _check_positive("lr", self.lr)
        check_setting("momentum", self.momentum, low=0, high=1, high_open=True)
        check_setting("weight_decay", self.weight_decay, low=0)

    def init_rule(self, y):
        return MomentumRuleState(torch.zeros_like(y))

    def update(self, grad, rule_state, y):
        if self.weight_decay:
            grad = grad + self.weight_decay * y
        buf = self.momentum * rule_state.buf + grad
        direction = grad + self.momentum * buf if self.nesterov else buf
        return -self.lr * direction, MomentumRuleState(buf)


def Nesterov(lr: float = 1e-2, momentum: float = 0.9, weight_decay: float = 0.0) -> Momentum:
    """Nesterov momentum, as ``torch.optim.SGD(momentum=mu, nesterov=True)``."""
    return Momentum(lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


@dataclass
class AdagradRuleState:
    sum_sq: Tensor
    step: Tensor  # (B,)


@dataclass(frozen=True)
class Adagrad(GradientRuleSolver):
    r"""Adagrad as ``torch.optim.Adagrad``: :math:`s_k = s_{k-1} + g_k^2,\
    y_{k+1} = y_k - \frac{\eta}{1 + (k-1)\delta} g_k / (\sqrt{s_k} + \epsilon)`."""

    lr: float = 1e-2
    lr_decay: float = 0.0
    eps: float = 1e-10
    initial_accumulator_value: float = 0.0

    def __post_init__(self):
        _check_positive("lr", self.lr)
        check_setting("lr_decay", self.lr_decay, low=0)
        check_setting("eps", self.eps, low=0)
        check_setting("initial_accumulator_value", self.initial_accumulator_value, low=0)

    def init_rule(self, y):
        return AdagradRuleState(
            torch.full_like(y, self.initial_accumulator_value), torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        )

    def update(self, grad, rule_state, y):
        step = rule_state.step + 1
        clr = self.lr / (1 + (step - 1) * self.lr_decay)
        sum_sq = rule_state.sum_sq + grad * grad
        delta = -clr[:, None] * grad / (_sqrt(sum_sq) + self.eps)
        return delta, AdagradRuleState(sum_sq, step)


@dataclass
class RMSPropRuleState:
    square_avg: Tensor
    grad_avg: Tensor
    buf: Tensor


@dataclass(frozen=True)
class RMSProp(GradientRuleSolver):
    r"""RMSProp as ``torch.optim.RMSprop``: :math:`v_k = \alpha v_{k-1} + (1-\alpha) g_k^2,\
    y_{k+1} = y_k - \eta g_k / (\sqrt{v_k} + \epsilon)` (optionally centered and with momentum)."""

    lr: float = 1e-2
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0
    centered: bool = False

    def __post_init__(self):
        _check_positive("lr", self.lr)
        check_setting("alpha", self.alpha, low=0, high=1, high_open=True)
        check_setting("eps", self.eps, low=0)
        check_setting("momentum", self.momentum, low=0, high=1, high_open=True)

    def init_rule(self, y):
        z = torch.zeros_like(y)
        return RMSPropRuleState(z, z, z)

    def update(self, grad, rule_state, y):
        sq = self.alpha * rule_state.square_avg + (1 - self.alpha) * grad * grad
        gavg = rule_state.grad_avg
        if self.centered:
            gavg = self.alpha * gavg + (1 - self.alpha) * grad
            avg = _sqrt(sq - gavg * gavg) + self.eps
        else:
            avg = _sqrt(sq) + self.eps
        buf = rule_state.buf
        if self.momentum > 0:
            buf = self.momentum * buf + grad / avg
            delta = -self.lr * buf
        else:
            delta = -self.lr * grad / avg
        return delta, RMSPropRuleState(sq, gavg, buf)


@dataclass
class AdamRuleState:
    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: Tensor  # (B,)


@dataclass(frozen=True)
class Adam(GradientRuleSolver):
    r"""Adam (Kingma & Ba 2015) as ``torch.optim.Adam`` / ``AdamW`` (``decoupled_weight_decay=True``).

    .. math::
        m_k = \beta_1 m_{k-1} + (1-\beta_1) g_k,\quad v_k = \beta_2 v_{k-1} + (1-\beta_2) g_k^2,\quad
        y_{k+1} = y_k - \frac{\eta}{1-\beta_1^k}\, m_k / (\sqrt{v_k / (1-\beta_2^k)} + \epsilon)
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False

    def __post_init__(self):
        _check_positive("lr", self.lr)
        if not (isinstance(self.betas, tuple | list) and len(self.betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            check_setting(f"betas[{i}]", beta, low=0, high=1, high_open=True)
        check_setting("eps", self.eps, low=0)
        check_setting("weight_decay", self.weight_decay, low=0)

    def init_rule(self, y):
        z = torch.zeros_like(y)
        return AdamRuleState(z, z, torch.zeros(y.shape[0], dtype=y.dtype, device=y.device))

    def update(self, grad, rule_state, y):
        b1, b2 = self.betas
        step = rule_state.step + 1
        decay = torch.zeros_like(y)
        if self.weight_decay and self.decoupled_weight_decay:
            decay = -self.lr * self.weight_decay * y
        elif self.weight_decay:
            grad = grad + self.weight_decay * y
        m = b1 * rule_state.exp_avg + (1 - b1) * grad
        v = b2 * rule_state.exp_avg_sq + (1 - b2) * grad * grad
        bc1 = 1 - b1**step
        bc2 = 1 - b2**step
        denom = (_sqrt(v) / bc2.sqrt()[:, None]) + self.eps
        delta = decay - (self.lr / bc1)[:, None] * m / denom
        return delta, AdamRuleState(m, v, step)


__all__ = ["GD", "Momentum", "Nesterov", "Adagrad", "RMSProp", "Adam", "Solver"]
