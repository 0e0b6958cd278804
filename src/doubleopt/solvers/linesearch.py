r"""Batched backtracking line search (each instance has its own step).

:func:`armijo_backtracking` finds, per instance, the largest :math:`t = t_0 \rho^j` with
:math:`f(y + t d) \le f(y) + c_1 t \nabla f(y)^\top d`. Accepted instances stop shrinking while the
others continue; an instance that finds no decrease in ``max_iter`` trials keeps its iterate and gets
``RESULTS.line_search_failed``. Trials evaluate value and gradient together, so the accepted trial's
gradient is reused by the solver (no extra evaluation when the first trial is accepted, the usual case
for L-BFGS and Newton).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._solution import RESULTS


@dataclass
class LineSearchResult:
    y: Tensor
    value: Tensor
    grad: Tensor
    step: Tensor  # (B,) accepted step (0 where it failed)
    status: Tensor  # (B,) RESULTS code


def armijo_backtracking(problem, x, y: Tensor, value: Tensor, grad: Tensor, direction: Tensor, step0: Tensor,
                        *, c1: float = 1e-4, shrink: float = 0.5, max_iter: int = 40) -> LineSearchResult:
    slope = (grad * direction).sum(-1)
    t = step0
    accepted = torch.zeros_like(value, dtype=torch.bool)
    # no descent possible: the direction is zero (converged) -> accept t with no move
    y_acc, v_acc, g_acc, t_acc = y, value, grad, torch.zeros_like(t)
    tiny = torch.finfo(y.dtype).eps
    for _ in range(max_iter):
        y_try = y + t[:, None] * direction
        v_try, g_try = problem.value_and_grad(y_try, x)
        # relative slack guards against rounding when f(y) is large
        ok = torch.isfinite(v_try) & (v_try <= value + c1 * t * slope + 4 * tiny * value.abs())
        new = ok & ~accepted
        y_acc = torch.where(new[:, None], y_try, y_acc)
        v_acc = torch.where(new, v_try, v_acc)
        g_acc = torch.where(new[:, None], g_try, g_acc)
        t_acc = torch.where(new, t, t_acc)
        accepted = accepted | ok
        if bool(accepted.all()):
            break
        t = torch.where(accepted, t, t * shrink)
    status = torch.where(accepted, int(RESULTS.successful), int(RESULTS.line_search_failed))
    return LineSearchResult(y_acc, v_acc, g_acc, t_acc, status.to(torch.int64))
