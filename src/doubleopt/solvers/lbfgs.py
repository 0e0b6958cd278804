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
    pairs: Tensor  # (B, 2m, n): the scaled s_i (rows 0..m-1) then the scaled r_i (rows m..2m-1), oldest first
    valid: Tensor  # (B, m) 1.0 for a stored pair, 0.0 for an empty or skipped slot (its rows are zero)
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
    scaled by :math:`1/\sqrt{s^\top y}` (BFGS is invariant to that), which keeps :math:`R` well conditioned
    near convergence (``diag(R) = 1``). Empty or skipped slots (``rho = 0``) are zeroed, so they contribute
    nothing.
    """
    scale = rho.clamp_min(0).sqrt()[..., None]
    pairs = torch.cat([s * scale, r * scale], dim=1)
    return _scaled_product(grad, pairs, (rho > 0).to(grad.dtype), gamma)


def _scaled_product(grad: Tensor, pairs: Tensor, valid: Tensor, gamma: Tensor) -> Tensor:
    """:func:`compact_inverse_hessian_product` on pre-scaled pairs ``[S; Y]`` (``s_i^T y_i = 1`` for a valid
    slot, zero rows for an empty one): three batched products and two triangular solves."""
    m = valid.shape[1]
    # one product gives the Gram matrix [S; Y][S; Y]' (S'S, S'Y, Y'S, Y'Y) and [S; Y] g in its last column
    G = pairs @ torch.cat([pairs.transpose(-1, -2), grad[..., None]], dim=-1)  # (B, 2m, 2m + 1)
    SY, YY, a, b = G[:, :m, m : 2 * m], G[:, m:, m : 2 * m], G[:, :m, -1:], G[:, m:, -1:]
    eye = torch.eye(m, dtype=grad.dtype, device=grad.device)
    # diag(S'Y) is 1 up to rounding for a valid slot; use the computed value (consistent with the stored
    # vectors: assuming exactly 1 stalls float32 solves near convergence); a unit diagonal on empty slots
    R = torch.addcmul(SY * torch.ones_like(eye).triu(), eye, (1 - valid)[..., None])
    u = torch.linalg.solve_triangular(R, a, upper=True)
    g = gamma[:, None, None]
    M = torch.addcmul(SY * eye, g, YY)  # D + gamma Y'Y
    p1 = torch.linalg.solve_triangular(R.transpose(-1, -2), torch.addcmul(M @ u, g, b, value=-1), upper=False)
    coef = torch.cat([p1, -g * u], dim=1)  # (B, 2m, 1)
    return torch.addcmul((pairs.transpose(-1, -2) @ coef)[..., 0], gamma[:, None], grad)


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
        return LBFGSState(
            value,
            grad,
            y.new_zeros(B, 2 * self.memory, n),
            y.new_zeros(B, self.memory),
            y.new_ones(B),
            torch.ones(B, dtype=torch.bool, device=y.device),
            torch.zeros(B, dtype=torch.int64, device=y.device),
        )

    def step(self, problem, y, x, state):
        m = self.memory
        d = _scaled_product(state.grad, state.pairs, state.valid, state.gamma).neg_()
        slope = (d * state.grad).sum(-1)
        if not bool((slope < 0).all()):  # reset to steepest descent where d is not a descent direction
            descent = slope < 0
            d = torch.where(descent[:, None], d, -state.grad)
            slope = torch.where(descent, slope, -(state.grad * state.grad).sum(-1))
        if bool(state.first.any()):  # first step: a gradient step of length at most 1
            gnorm = torch.linalg.vector_norm(state.grad, dim=-1)
            t0 = torch.where(state.first, 1.0 / gnorm.clamp_min(1.0), torch.ones_like(gnorm))
        else:
            t0 = torch.ones_like(state.value)
        ls = armijo_backtracking(
            problem, x, y, state.value, state.grad, d, t0, c1=self.c1, max_iter=self.max_line_search, slope=slope
        )
        s_new = ls.y - y
        r_new = ls.grad - state.grad
        sr = (s_new * r_new).sum(-1)
        rr = (r_new * r_new).sum(-1)
        ok = sr > torch.finfo(y.dtype).eps * rr
        okf = ok.to(y.dtype)
        # store the pair scaled by 1 / sqrt(s'r) (s'r = 1 after scaling); a skipped pair is stored as zeros
        scale = (torch.where(ok, sr, torch.ones_like(sr)).rsqrt() * okf)[:, None, None]
        new = torch.stack([s_new, r_new], dim=1) * scale  # (B, 2, n)
        pairs = torch.cat([state.pairs[:, 1:m], new[:, :1], state.pairs[:, m + 1 :], new[:, 1:]], dim=1)
        valid = torch.cat([state.valid[:, 1:], okf[:, None]], dim=1)
        gamma = torch.where(ok, sr / torch.where(ok, rr, torch.ones_like(rr)), state.gamma)
        first = state.first & ~ok
        return ls.y, LBFGSState(ls.value, ls.grad, pairs, valid, gamma, first, ls.status)
