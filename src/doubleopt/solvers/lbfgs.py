r"""Batched L-BFGS (Liu & Nocedal 1989) with Armijo backtracking.

Each instance keeps its own memory of the last ``memory`` pairs
:math:`s_k = y_{k+1} - y_k,\ r_k = \nabla f_{k+1} - \nabla f_k`; the two-loop recursion runs over the
memory for the whole batch at once, in the compact form of Byrd, Nocedal & Schnabel (1994): a few batched
matrix products per step, never a loop over instances.
A pair with insufficient curvature :math:`s^\top r \le \epsilon\, r^\top r` is stored with weight 0
(skipped) for that instance. The initial Hessian is :math:`\gamma I` with
:math:`\gamma = s^\top r / r^\top r` of the newest accepted pair.

Example:
    >>> import torch, doubleopt as do
    >>> fam = do.problems.Rosenbrock(dim=4)
    >>> x = fam.sample(16, seed=0)
    >>> sol = do.solve(fam, do.LBFGS(), x, max_steps=500, tol=1e-6)
    >>> bool(sol.successful.all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._base import Solver
from .linesearch import armijo_backtracking


@dataclass
class LBFGSState:
    value: Tensor
    grad: Tensor
    s: Tensor  # (B, m, n) oldest first
    r: Tensor  # (B, m, n)
    rho: Tensor  # (B, m), 0 marks an empty or skipped slot
    gamma: Tensor  # (B,)
    first: Tensor  # (B,) bool: no step taken yet
    status: Tensor  # (B,)


def two_loop(grad: Tensor, s: Tensor, r: Tensor, rho: Tensor, gamma: Tensor) -> Tensor:
    """Batched two-loop recursion: returns :math:`H_k g` for every instance (reference implementation)."""
    q = grad
    m = s.shape[1]
    alphas = []
    for i in range(m - 1, -1, -1):
        a = rho[:, i] * (s[:, i] * q).sum(-1)
        q = q - a[:, None] * r[:, i]
        alphas.append(a)
    out = gamma[:, None] * q
    for i in range(m):
        b = rho[:, i] * (r[:, i] * out).sum(-1)
        out = out + s[:, i] * (alphas[m - 1 - i] - b)[:, None]
    return out


def compact_inverse_hessian_product(grad: Tensor, s: Tensor, r: Tensor, rho: Tensor, gamma: Tensor) -> Tensor:
    r""":math:`H_k g` from the compact representation (Byrd, Nocedal & Schnabel 1994), batched.

    .. math:: H_k = \gamma I + [S\ \gamma Y]
        \begin{bmatrix} R^{-T}(D + \gamma Y^\top Y)R^{-1} & -R^{-T} \\ -R^{-1} & 0 \end{bmatrix}
        \begin{bmatrix} S^\top \\ \gamma Y^\top \end{bmatrix}

    with :math:`R` the upper triangle of :math:`S^\top Y` and :math:`D` its diagonal. Equal to the two-loop
    recursion, but a handful of batched matrix products instead of ``4 m`` small operations. Each pair is
    scaled by :math:`1/\\sqrt{s^\\top y}` (BFGS is invariant to that), which keeps :math:`R` well conditioned
    near convergence. Empty or skipped slots (``rho = 0``) are zeroed and get a unit diagonal in ``R``, so
    they contribute nothing.
    """
    valid = (rho != 0).to(grad.dtype)
    # BFGS is invariant to scaling a pair (s, y) jointly: scale each by sqrt(rho) = 1 / sqrt(s'y) so that
    # diag(R) = 1 and R stays well conditioned as the steps shrink (empty slots: scale 0)
    scale = rho.clamp_min(0).sqrt()[..., None]
    S = s * scale
    Y = r * scale
    m = S.shape[1]
    a = S @ grad[..., None]  # (B, m, 1)
    b = Y @ grad[..., None]
    SY = S @ Y.transpose(-1, -2)
    eye = torch.eye(m, dtype=grad.dtype, device=grad.device)
    R = SY * torch.ones_like(eye).triu() + torch.diag_embed(1.0 - valid)
    u = torch.linalg.solve_triangular(R, a, upper=True)
    g = gamma[:, None, None]
    M = torch.diagonal(SY, dim1=-2, dim2=-1)[..., None] * eye + g * (Y @ Y.transpose(-1, -2))
    p1 = torch.linalg.solve_triangular(R.transpose(-1, -2), M @ u - g * b, upper=False)
    out = gamma[:, None] * grad + (S.transpose(-1, -2) @ p1)[..., 0] - (g * (Y.transpose(-1, -2) @ u))[..., 0]
    return out


@dataclass(frozen=True)
class LBFGS(Solver):
    """Limited-memory BFGS, batched.

    Args:
        memory: number of curvature pairs kept per instance.
        c1: Armijo constant of the backtracking line search.
        max_line_search: trials before an instance reports ``line_search_failed``.
    """

    memory: int = 10
    c1: float = 1e-4
    max_line_search: int = 40

    def __post_init__(self):
        if self.memory < 1:
            raise ValueError(f"memory must be >= 1, got {self.memory}")

    def init(self, problem, y, x):
        value, grad = problem.value_and_grad(y, x)
        B, n = y.shape
        z = y.new_zeros(B, self.memory, n)
        return LBFGSState(
            value,
            grad,
            z,
            z,
            y.new_zeros(B, self.memory),
            y.new_ones(B),
            torch.ones(B, dtype=torch.bool, device=y.device),
            torch.zeros(B, dtype=torch.int64, device=y.device),
        )

    def step(self, problem, y, x, state):
        d = -compact_inverse_hessian_product(state.grad, state.s, state.r, state.rho, state.gamma)
        descent = (d * state.grad).sum(-1) < 0
        d = torch.where(descent[:, None], d, -state.grad)  # reset to steepest descent if not descent
        gnorm = torch.linalg.vector_norm(state.grad, dim=-1)
        t0 = torch.where(state.first, 1.0 / gnorm.clamp_min(1.0), torch.ones_like(gnorm))
        ls = armijo_backtracking(
            problem, x, y, state.value, state.grad, d, t0, c1=self.c1, max_iter=self.max_line_search
        )
        s_new = ls.y - y
        r_new = ls.grad - state.grad
        sr = (s_new * r_new).sum(-1)
        rr = (r_new * r_new).sum(-1)
        ok = sr > torch.finfo(y.dtype).eps * rr
        rho_new = torch.where(ok, 1.0 / torch.where(ok, sr, torch.ones_like(sr)), torch.zeros_like(sr))
        gamma = torch.where(ok, sr / torch.where(ok, rr, torch.ones_like(rr)), state.gamma)
        s = torch.cat([state.s[:, 1:], s_new[:, None]], dim=1)
        r = torch.cat([state.r[:, 1:], r_new[:, None]], dim=1)
        rho = torch.cat([state.rho[:, 1:], rho_new[:, None]], dim=1)
        first = state.first & ~ok
        return ls.y, LBFGSState(ls.value, ls.grad, s, r, rho, gamma, first, ls.status)
