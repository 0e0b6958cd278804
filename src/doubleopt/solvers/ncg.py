r"""Batched nonlinear conjugate gradient, Polak-Ribiere+ with restarts and a strong-Wolfe line search.

:math:`d_{k+1} = -g_{k+1} + \beta_k d_k,\ \beta_k = \max(0, g_{k+1}^\top (g_{k+1} - g_k) / \|g_k\|^2)`;
the direction restarts at :math:`-g` every ``restart`` steps (default ``n``) or when it is not a descent
direction. The first trial step uses the Nocedal-Wright guess
:math:`t_0 = t_{k-1}\, g_{k-1}^\top d_{k-1} / g_k^\top d_k`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._base import Solver, check_setting
from .linesearch import wolfe_line_search


@dataclass
class NCGState:
    value: Tensor
    grad: Tensor
    direction: Tensor
    step: Tensor  # (B,) last accepted step
    slope: Tensor  # (B,) g^T d at the last step
    count: Tensor  # (B,) steps since restart
    status: Tensor


@dataclass(frozen=True)
class NonlinearCG(Solver):
    """Polak-Ribiere+ nonlinear CG.

    Args:
        restart: restart period (``None``: the problem dimension).
        c1: the strong-Wolfe sufficient-decrease constant.
        c2: the strong-Wolfe curvature constant.
    """

    restart: int | None = None
    c1: float = 1e-4
    c2: float = 0.1
    max_line_search: int = 30

    def __post_init__(self):
        if self.restart is not None:
            check_setting("restart", self.restart, low=1, integer=True)
        check_setting("c1", self.c1, low=0, high=1, low_open=True, high_open=True)
        check_setting("c2", self.c2, low=0, high=1, low_open=True, high_open=True)
        if not self.c1 < self.c2:
            raise ValueError(f"c1 < c2 is needed (strong Wolfe conditions), got c1 = {self.c1}, c2 = {self.c2}")
        check_setting("max_line_search", self.max_line_search, low=1, integer=True)

    def init(self, problem, y, x):
        value, grad = problem.value_and_grad(y, x)
        B = y.shape[0]
        gnorm = torch.linalg.vector_norm(grad, dim=-1)
        return NCGState(
            value,
            grad,
            -grad,
            1.0 / gnorm.clamp_min(1.0),
            -(gnorm**2),
            torch.zeros(B, dtype=torch.int64, device=y.device),
            torch.zeros(B, dtype=torch.int64, device=y.device),
        )

    def step(self, problem, y, x, state):
        d = state.direction
        slope = (d * state.grad).sum(-1)
        restart = slope >= 0
        d = torch.where(restart[:, None], -state.grad, d)
        slope = torch.where(restart, -(state.grad**2).sum(-1), slope)
        t0 = (state.step * state.slope / slope.clamp_max(-torch.finfo(y.dtype).tiny)).clamp(1e-10, 1e10)
        ls = wolfe_line_search(
            problem, x, y, state.value, state.grad, d, t0, c1=self.c1, c2=self.c2, max_iter=self.max_line_search
        )
        g_new = ls.grad
        g_old_sq = (state.grad**2).sum(-1).clamp_min(torch.finfo(y.dtype).tiny)
        beta = ((g_new * (g_new - state.grad)).sum(-1) / g_old_sq).clamp_min(0.0)
        period = self.restart or y.shape[1]
        count = state.count + 1
        reset = count >= period
        beta = torch.where(reset, torch.zeros_like(beta), beta)
        count = torch.where(reset, torch.zeros_like(count), count)
        d_new = -g_new + beta[:, None] * d
        return ls.y, NCGState(
            ls.value, g_new, d_new, torch.where(ls.step > 0, ls.step, state.step), slope, count, ls.status
        )
