r"""Batched conjugate gradient for symmetric positive definite operators.

Solves :math:`A_i v_i = b_i` for every instance ``i`` at once, where ``matvec(v)`` applies all
:math:`A_i` to the rows of ``v`` (shape ``(B, n)``). Instances stop individually when
:math:`\|r_i\| \le \max(\text{rtol}\,\|b_i\|, \text{atol})`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class CGResult:
    solution: Tensor  # (B, n)
    converged: Tensor  # (B,) bool
    iterations: int
    residual_norm: Tensor  # (B,)


def batched_cg(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    x0: Tensor | None = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_iter: int | None = None,
) -> CGResult:
    """Batched CG. Example:

    >>> import torch
    >>> A = torch.eye(3).expand(2, 3, 3) * torch.tensor([1.0, 4.0])[:, None, None]
    >>> res = batched_cg(lambda v: (A @ v[..., None])[..., 0], torch.ones(2, 3))
    >>> res.solution
    tensor([[1.0000, 1.0000, 1.0000],
            [0.2500, 0.2500, 0.2500]])
    """
    n = b.shape[-1]
    max_iter = max_iter if max_iter is not None else max(10 * n, 50)
    x = torch.zeros_like(b) if x0 is None else x0
    r = b - matvec(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = (r * r).sum(-1)
    bnorm = torch.linalg.vector_norm(b, dim=-1)
    thresh = torch.maximum(rtol * bnorm, torch.full_like(bnorm, atol))
    done = rs.sqrt() <= thresh
    tiny = torch.finfo(b.dtype).tiny
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        if bool(done.all()):
            break
        Ap = matvec(p)
        pAp = (p * Ap).sum(-1)
        alpha = torch.where(done | (pAp <= tiny), torch.zeros_like(rs), rs / pAp.clamp_min(tiny))
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * Ap
        rs_new = (r * r).sum(-1)
        beta = torch.where(done, torch.zeros_like(rs), rs_new / rs.clamp_min(tiny))
        p = r + beta[:, None] * p
        rs = torch.where(done, rs, rs_new)
        done = done | (rs.sqrt() <= thresh) | (pAp <= tiny)
    res = rs.sqrt()
    return CGResult(x, res <= thresh, it, res)
