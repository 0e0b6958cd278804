r"""Batched restarted GMRES for general (non-symmetric) linear operators.

Solves :math:`A_i v_i = b_i` for every instance ``i`` at once, where ``matvec(v)`` applies all :math:`A_i`
to the rows of ``v`` (shape ``(B, n)``). Each cycle builds a Krylov basis of at most ``restart`` vectors by
Arnoldi (modified Gram-Schmidt) and takes the minimizer of :math:`\|b_i - A_i v_i\|_2` over it (a small
least-squares problem per instance, Saad & Schultz 1986). Instances stop individually when
:math:`\|r_i\| \le \max(\text{rtol}\,\|b_i\|, \text{atol})`; the others keep iterating.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._cg import CGResult


def batched_gmres(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    x0: Tensor | None = None,
    rtol: float = 1e-8,
    atol: float = 0.0,
    restart: int = 30,
    max_iter: int | None = None,
) -> CGResult:
    """Batched restarted GMRES; ``iterations`` in the result counts matrix-vector products.

    Example:
        >>> import torch
        >>> A = torch.tensor([[[2.0, 1.0], [0.0, 3.0]], [[1.0, -1.0], [1.0, 1.0]]], dtype=torch.float64)
        >>> b = torch.ones(2, 2, dtype=torch.float64)
        >>> res = batched_gmres(lambda v: (A @ v[..., None])[..., 0], b, rtol=1e-12)
        >>> torch.allclose(A @ res.solution[..., None], b[..., None]), res.converged.tolist()
        (True, [True, True])
    """
    if restart < 1:
        raise ValueError(f"restart must be >= 1, got {restart}")
    B, n = b.shape
    max_iter = max_iter if max_iter is not None else max(10 * n, 50)
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    bnorm = torch.linalg.vector_norm(b, dim=-1)
    thresh = torch.maximum(rtol * bnorm, torch.full_like(bnorm, atol))
    tiny = torch.finfo(b.dtype).tiny
    its = 0
    r = b - matvec(x) if x0 is not None else b.clone()
    its += x0 is not None
    rnorm = torch.linalg.vector_norm(r, dim=-1)
    while True:
        done = rnorm <= thresh
        if bool(done.all()) or its >= max_iter:
            break
        m = min(restart, max_iter - its, n)
        V = [r / rnorm.clamp_min(tiny)[:, None]]
        H = b.new_zeros(B, m + 1, m)
        beta_e1 = b.new_zeros(B, m + 1)
        beta_e1[:, 0] = rnorm
        coef = b.new_zeros(B, 0)
        for j in range(m):
            w = matvec(V[j])
            its += 1
            for i in range(j + 1):
                h = (w * V[i]).sum(-1)
                H[:, i, j] = h
                w = w - h[:, None] * V[i]
            hn = torch.linalg.vector_norm(w, dim=-1)
            H[:, j + 1, j] = hn
            V.append(torch.where((hn > tiny)[:, None], w / hn.clamp_min(tiny)[:, None], torch.zeros_like(w)))
            Hj = H[:, : j + 2, : j + 1]
            coef = torch.linalg.lstsq(Hj, beta_e1[:, : j + 2, None]).solution[..., 0]
            ls_res = torch.linalg.vector_norm(beta_e1[:, : j + 2] - (Hj @ coef[..., None])[..., 0], dim=-1)
            if bool(((ls_res <= thresh) | done | (hn <= tiny)).all()):
                break
        update = torch.einsum("bk,kbn->bn", coef, torch.stack(V[: coef.shape[-1]]))
        x = torch.where(done[:, None], x, x + update)
        r = b - matvec(x)
        its += 1
        rnorm = torch.linalg.vector_norm(r, dim=-1)
    return CGResult(x, rnorm <= thresh, its, rnorm)
