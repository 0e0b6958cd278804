r"""Damped Newton's method with a batched Cholesky solve (for small ``n``).

:math:`(\nabla^2 f(y_k) + \lambda_k I) d_k = -\nabla f(y_k)`, :math:`\lambda_k = 0` when the Hessian is
positive definite, otherwise increased tenfold per instance until the Cholesky factorization succeeds
(Levenberg-Marquardt style). The step length comes from Armijo backtracking starting at 1.
Each step costs one dense Hessian (``n`` batched Hessian-vector products unless the problem overrides
:meth:`~doubleopt.Problem.hessian`) and an :math:`O(n^3)` factorization per instance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._solution import RESULTS
from ._base import Solver, check_setting
from .linesearch import armijo_backtracking


@dataclass
class NewtonState:
    value: Tensor
    grad: Tensor
    status: Tensor


@dataclass(frozen=True)
class Newton(Solver):
    """Damped Newton with Cholesky.

    Args:
        c1: Armijo constant.
        max_damping_tries: tenfold increases of the shift before ``linear_solver_failed``.
    """

    c1: float = 1e-4
    max_damping_tries: int = 20

    def __post_init__(self):
        check_setting("c1", self.c1, low=0, high=1, low_open=True, high_open=True)
        check_setting("max_damping_tries", self.max_damping_tries, low=1, integer=True)

    def init(self, problem, y, x):
        value, grad = problem.value_and_grad(y, x)
        return NewtonState(value, grad, torch.zeros(y.shape[0], dtype=torch.int64, device=y.device))

    def step(self, problem, y, x, state):
        H = problem.hessian(y, x)
        B, n = y.shape
        eye = torch.eye(n, dtype=y.dtype, device=y.device)
        scale = H.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1.0)
        lam = torch.zeros(B, dtype=y.dtype, device=y.device)
        L = torch.zeros_like(H)
        solved = torch.zeros(B, dtype=torch.bool, device=y.device)
        for _ in range(self.max_damping_tries):
            Lk, info = torch.linalg.cholesky_ex(H + lam[:, None, None] * eye)
            ok = (info == 0) & ~solved
            L = torch.where(ok[:, None, None], Lk, L)
            solved = solved | ok
            if bool(solved.all()):
                break
            lam = torch.where(solved, lam, torch.where(lam == 0, 1e-8 * scale, lam * 10.0))
        Lsafe = torch.where(solved[:, None, None], L, eye.expand_as(L))
        d = -torch.cholesky_solve(state.grad[..., None], Lsafe)[..., 0]
        d = torch.where(solved[:, None], d, torch.zeros_like(d))
        ls = armijo_backtracking(problem, x, y, state.value, state.grad, d, torch.ones_like(lam), c1=self.c1)
        status = torch.where(solved, ls.status, int(RESULTS.linear_solver_failed))
        return ls.y, NewtonState(ls.value, ls.grad, status)
