"""The OptNet KKT backward: the adjoint system on the forward factorization, and the solution made
differentiable through the KKT conditions (what ``do.Implicit()`` uses for QPs)."""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..._iterate import replace_rows
from .reduced_system import _chol_solve, _kkt_solve, _mtv, _mv, _NullSpace, _qr, _sym, data_key, qp_guards

if TYPE_CHECKING:
    from .interior_point import QPState
    from .problem import QPData


class _QPKKT(torch.autograd.Function):
    """Forward: the solution ``z`` (already computed). Backward: the OptNet adjoint system."""

    @staticmethod
    def forward(ctx, z, lam, nu, s, d, L, W, LM, ns, Qs, Q, q, A, b, G, h):
        ctx.save_for_backward(z, lam, nu, s, d, L, W, LM)
        ctx.p, ctx.m = b.shape[-1], h.shape[-1]
        ctx.Q = _sym(Q.detach()) if Qs is None else Qs  # Qs: the forward's symmetric part, when it is cached
        ctx.A, ctx.G, ctx.ns = A.detach(), G.detach(), ns
        return z.clone()

    @staticmethod
    def backward(ctx, gz):
        z, lam, nu, s, d, L, W, LM = ctx.saved_tensors
        if ctx.ns is not None and L.shape[-1] < gz.shape[-1]:
            wz, what, wnu = _kkt_adjoint_nullspace(ctx.ns, ctx.Q, lam, s, d, L, gz)
        else:
            wz, what, wnu = kkt_adjoint_solve(ctx.Q, ctx.A, ctx.G, lam, s, d, L, W, LM, gz)
        need = ctx.needs_input_grad
        gQ = gq = gA = gb = gG = gh = None
        # each matrix gradient is a sum of two outer products: one rank-2 batched product, one pass over the output
        right = torch.stack([wz, z], dim=1)  # (B, 2, n)
        if need[10]:  # 1/2 (w_z z' + z w_z')
            gQ = torch.bmm(torch.stack([0.5 * z, 0.5 * wz], dim=-1), right)
        if need[11]:
            gq = wz
        if need[12]:  # nu w_z' + w_nu z'
            gA = torch.bmm(torch.stack([nu, wnu], dim=-1), right)
        if need[13]:
            gb = -wnu
        if need[14]:  # lam w_z' + w_hat z'
            gG = torch.bmm(torch.stack([lam, what], dim=-1), right)
        if need[15]:
            gh = -what
        return (None,) * 10 + (gQ, gq, gA, gb, gG, gh)


def kkt_adjoint_solve(Q, A, G, lam, s, d, L, W, LM, gz, refinements: int = 3):
    r"""Solve the OptNet adjoint system at a QP solution, reusing the interior-point factorization.

    Unknowns :math:`(w_z, \hat w, w_\nu)` with :math:`\hat w = \Lambda w_\lambda`:

    .. math:: Q w_z + G^\top \hat w + A^\top w_\nu = -\bar z,\quad G w_z - (s/\lambda) \circ \hat w = 0,
       \quad A w_z = 0.

    Eliminating :math:`\hat w = D G w_z` gives the reduced matrix :math:`H = Q + G^\top D G` that the
    forward pass factorized. ``H`` is ill-conditioned near the solution (``D -> inf`` on active
    constraints), so a few steps of iterative refinement on this well-scaled system recover full accuracy.
    """
    m = lam.shape[-1]
    E = _adjoint_scaling(s, lam)
    wz = torch.zeros_like(gz)
    what = gz.new_zeros(gz.shape[0], m)
    wnu = gz.new_zeros(gz.shape[0], A.shape[-2])
    ur = _qr(A) if L.shape[-1] < gz.shape[-1] else None  # null-space mode: the forward pass's exact basis
    R1, R2, R3 = -gz, what, wnu
    for k in range(refinements + 1):
        rhs = R1 + _mtv(G, d * R2) if m > 0 else R1
        dz, dnu = _kkt_solve(L, W, LM, Q, A, G, d, rhs, R3, ur)
        dw = d * (_mv(G, dz) - R2) if m > 0 else what
        wz, what, wnu = wz + dz, what + dw, wnu + dnu
        if k == refinements:
            break
        R1 = -gz - _mv(Q, wz) - (_mtv(G, what) if m > 0 else 0.0) - (_mtv(A, wnu) if A.shape[-2] > 0 else 0.0)
        R2 = -(_mv(G, wz) - E * what) if m > 0 else what
        R3 = -_mv(A, wz) if A.shape[-2] > 0 else wnu
    return wz, what, wnu


def _adjoint_scaling(s: Tensor, lam: Tensor) -> Tensor:
    """``E = s / lam``, finite: ``0`` on active constraints (``s = 0``), large but finite where ``lam = 0``
    (their ``w_hat`` is exactly 0 there, and ``E * 0`` must stay 0)."""
    g = qp_guards(s.dtype)
    return (s / lam.clamp_min(g.tiny)).clamp(max=g.huge)


def _kkt_adjoint_nullspace(ns: _NullSpace, Qs: Tensor, lam, s, d, L, gz, refinements: int = 3):
    r""":func:`kkt_adjoint_solve` in the forward pass's null-space coordinates: ``w_z = N u`` (so
    :math:`A w_z = 0` exactly), refinement on :math:`N^\top Q N u + (GN)^\top \hat w = -N^\top \bar z`,
    :math:`GN u - E \hat w = 0` (passes over ``GN``, ``k x k`` solves), then
    :math:`R\, w_\nu = -Y^\top(\bar z + Q w_z + G^\top \hat w)`."""
    E = _adjoint_scaling(s, lam)
    rhs0 = -_mtv(ns.N, gz)
    u = _chol_solve(L, rhs0[..., None])[..., 0]
    Gu = _mv(ns.Gr, u)
    what = d * Gu
    for _ in range(refinements):
        R1 = rhs0 - _mv(ns.Qr, u) - _mtv(ns.Gr, what)
        R2 = E * what - Gu
        du = _chol_solve(L, (R1 + _mtv(ns.Gr, d * R2))[..., None])[..., 0]
        Gdu = _mv(ns.Gr, du)
        u, Gu, what = u + du, Gu + Gdu, what + d * (Gdu - R2)
    wz = _mv(ns.N, u)
    t = _mtv(ns.Y, gz + _mv(Qs, wz)) + _mtv(ns.GY, what)
    wnu = -torch.linalg.solve_triangular(ns.R, t[..., None], upper=True)[..., 0]
    return wz, what, wnu


def qp_kkt_differentiable(z: Tensor, state: QPState, x: QPData) -> Tensor:
    """``z`` with a backward through the KKT conditions (used by ``do.Implicit()`` on QP problems).

    The adjoint system is solved on the state's factorization, with the solve's constants (``state.consts``,
    computed under ``no_grad`` by the forward: the same tensors, detached) where they belong to ``x``."""
    tensors = (x.Q, x.q, x.A, x.b, x.G, x.h)
    if not any(t.requires_grad for t in tensors):
        return z
    st = state
    ns = Qs = None
    consts = getattr(st, "consts", None)
    if consts is not None and consts.key == data_key(x):
        c = consts.rows_for(st.rows)
        Qs = c.Qs.detach()
        if c.ns is not None:
            ns = _NullSpace(*(getattr(c.ns, f.name).detach() for f in fields(_NullSpace)))
    parts = [t.detach() for t in (z, st.lam, st.nu, st.s, st.d, st.L, st.W, st.LM)]
    B = z.shape[0]
    bad = torch.zeros(B, dtype=torch.bool, device=z.device)
    for t in parts + [t.detach() for t in tensors]:
        if t.dim() > 0 and t.shape[0] == B:
            bad = bad | ~torch.isfinite(t.reshape(B, -1)).all(-1)
    if bool(bad.any()) and not bool(bad.all()):
        # an instance refused as non-finite (its data or state holds NaN / inf) solves its adjoint system on a
        # finite instance's state and is returned as a constant: it adds 0, not NaN, to shared matrices' gradients
        donor = int(torch.nonzero(~bad).flatten()[0])
        parts = replace_rows(parts, bad, donor)
        out = _QPKKT.apply(*parts, ns, Qs, *tensors)
        return torch.where(bad[:, None], z.detach(), out)
    return _QPKKT.apply(*parts, ns, Qs, *tensors)
