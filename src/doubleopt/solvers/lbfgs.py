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
import torch.nn.functional as F
from torch import Tensor

from ._base import Solver, check_setting
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
    # the compact representation's small matrices, updated with each new pair (see _push_pair)
    rinv: Tensor  # (B, m, m) R^{-1}, R = upper triangle of S'Y (unit diagonal on empty or skipped slots)
    yy: Tensor  # (B, m, m) Y'Y
    sy: Tensor  # (B, m) diag(S'Y) (1 up to rounding for a stored pair, 0 for an empty slot)
    pg: Tensor  # (B, 2m) [S; Y] grad


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

    This builds the solver's state by pushing the pairs oldest first, as :class:`LBFGS` does one pair per
    step, and applies it to ``grad``.
    """
    B, m, n = s.shape
    pairs, valid, rinv, yy, sy = _empty_memory(grad, m)
    for i in range(m):
        ok = rho[:, i] > 0
        scale = torch.where(ok, rho[:, i], torch.zeros_like(rho[:, i])).sqrt()
        pairs, valid, rinv, yy, sy, pg = _push_pair(
            pairs, valid, rinv, yy, sy, s[:, i] * scale[:, None], r[:, i] * scale[:, None], ok, grad
        )
    return _product(grad, pairs, pg, rinv, yy, sy, gamma)


def _empty_memory(like: Tensor, m: int):
    """``pairs, valid, rinv, yy, sy`` of an empty memory (every slot empty: zero rows, ``R = I``)."""
    B, n = like.shape
    eye = torch.eye(m, dtype=like.dtype, device=like.device)
    zeros = like.new_zeros
    return zeros(B, 2 * m, n), zeros(B, m), eye.expand(B, m, m), zeros(B, m, m), zeros(B, m)


def _push_pair(
    pairs: Tensor, valid: Tensor, rinv: Tensor, yy: Tensor, sy: Tensor, s: Tensor, r: Tensor, ok: Tensor, grad: Tensor
):
    r"""Drop the oldest pair, append the pre-scaled pair ``(s, r)`` (``s^T r = 1``; zeros where ``ok`` is False,
    a skipped pair), and update the small matrices of the compact form incrementally: one batched product
    ``[S; Y] [r, g]`` gives the new column of :math:`R` and of :math:`Y^\top Y` and ``[S; Y] g`` for the next
    direction. :math:`R^{-1}` is updated in closed form: dropping the oldest pair removes the first row and
    column of :math:`R` and of :math:`R^{-1}` (the inverse of a trailing block of a triangular matrix is the
    trailing block of its inverse), and appending the column :math:`(c, \delta)` gives
    :math:`\begin{bmatrix} R^{-1} & -R^{-1} c / \delta \\ 0 & 1/\delta \end{bmatrix}`."""
    m = valid.shape[1]
    pairs = torch.cat([pairs[:, 1:m], s[:, None], pairs[:, m + 1 :], r[:, None]], dim=1)
    q2 = pairs @ torch.stack([r, grad], dim=-1)  # (B, 2m, 2): [S; Y] r and [S; Y] g
    q = q2[..., 0]
    okf = ok.to(s.dtype)
    # the computed s'r (1 up to rounding; consistent with the stored vectors: assuming exactly 1 stalls float32
    # solves near convergence) for a stored pair, 1 (an identity column) for a skipped one, whose s'r is 0
    delta_inv = torch.add(q[:, m - 1], 1 - okf).reciprocal()[:, None, None]
    kept = rinv[:, 1:, 1:]
    col = (kept @ q[:, : m - 1, None]) * -delta_inv
    rinv = torch.cat([torch.cat([kept, col], dim=-1), F.pad(delta_inv, (m - 1, 0))], dim=1)
    yy = torch.cat([torch.cat([yy[:, 1:, 1:], q[:, m : 2 * m - 1, None]], dim=-1), q[:, None, m:]], dim=1)
    sy = torch.cat([sy[:, 1:], q[:, m - 1 : m]], dim=1)
    valid = torch.cat([valid[:, 1:], okf[:, None]], dim=1)
    return pairs, valid, rinv, yy, sy, q2[..., 1]


def _product(
    grad: Tensor, pairs: Tensor, pg: Tensor, rinv: Tensor, yy: Tensor, sy: Tensor, gamma: Tensor, sign: float = 1.0
) -> Tensor:
    r"""``sign * H g`` from the compact form's small matrices and ``pg = [S; Y] g`` (a = S'g, b = Y'g):
    :math:`H g = \gamma g + S p - \gamma Y u`, :math:`u = R^{-1} a`,
    :math:`p = R^{-T}(D u + \gamma (Y^\top Y u - b))`: four small batched products."""
    m = sy.shape[1]
    g3 = gamma[:, None, None]
    u = rinv @ pg[:, :m, None]
    w = torch.addcmul(sy[..., None] * u, g3, torch.baddbmm(pg[:, m:, None], yy, u, beta=-1))
    coef = torch.cat([rinv.transpose(-1, -2) @ w, -g3 * u], dim=1)  # (B, 2m, 1)
    gg = (gamma[:, None] * grad)[..., None]
    return torch.baddbmm(gg, pairs.transpose(-1, -2), coef, beta=sign, alpha=sign)[..., 0]


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
        check_setting("memory", self.memory, low=1, integer=True)
        check_setting("c1", self.c1, low=0, high=1, low_open=True, high_open=True)
        check_setting("max_line_search", self.max_line_search, low=1, integer=True)

    def init(self, problem, y, x):
        value, grad = problem.value_and_grad(y, x)
        B, n = y.shape
        pairs, valid, rinv, yy, sy = _empty_memory(y, self.memory)
        return LBFGSState(
            value,
            grad,
            pairs,
            valid,
            y.new_ones(B),
            torch.ones(B, dtype=torch.bool, device=y.device),
            torch.zeros(B, dtype=torch.int64, device=y.device),
            rinv,
            yy,
            sy,
            y.new_zeros(B, 2 * self.memory),
        )

    def step(self, problem, y, x, state):
        grad = state.grad
        d = _product(grad, state.pairs, state.pg, state.rinv, state.yy, state.sy, state.gamma, sign=-1.0)
        slope = torch.linalg.vecdot(d, grad)
        if not bool((slope < 0).all()):  # reset to steepest descent where d is not a descent direction
            descent = slope < 0
            d = torch.where(descent[:, None], d, -grad)
            slope = torch.where(descent, slope, -(grad * grad).sum(-1))
        any_first = bool(state.first.any())
        if any_first:  # first step: a gradient step of length at most 1
            gnorm = torch.linalg.vector_norm(grad, dim=-1)
            t0 = torch.where(state.first, 1.0 / gnorm.clamp_min(1.0), torch.ones_like(gnorm))
        else:
            t0 = 1.0  # the unit step everywhere (the line search's cheapest path)
        ls = armijo_backtracking(
            problem, x, y, state.value, grad, d, t0, c1=self.c1, max_iter=self.max_line_search, slope=slope
        )
        s_new = ls.y - y
        r_new = ls.grad - grad
        sr = torch.linalg.vecdot(s_new, r_new)
        rr = torch.linalg.vecdot(r_new, r_new)
        ok = sr > torch.finfo(y.dtype).eps * rr
        # store the pair scaled by 1 / sqrt(s'r) (s'r = 1 after scaling); a skipped pair is stored as zeros
        scale = (torch.where(ok, sr, 1.0).rsqrt() * ok)[:, None]
        pairs, valid, rinv, yy, sy, pg = _push_pair(
            state.pairs, state.valid, state.rinv, state.yy, state.sy, s_new * scale, r_new * scale, ok, ls.grad
        )
        gamma = torch.where(ok, sr / torch.where(ok, rr, 1.0), state.gamma)
        first = state.first & ~ok if any_first else state.first
        return ls.y, LBFGSState(ls.value, ls.grad, pairs, valid, gamma, first, ls.status, rinv, yy, sy, pg)
