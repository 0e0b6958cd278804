"""The reduced KKT systems of the interior point: the per-solve constants (:class:`QPConstants`), the null space
of the equalities, the reduced Hessian, its factorization and solves, the cold start, and the dtype guards.

Nothing here depends on the solver or on the problem class: :mod:`.problem` (the problem's cold start and KKT
hook), :mod:`.interior_point` and :mod:`.kkt_backward` all build on it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ...linalg._shared import bmtv, bmv, is_shared, sym

if TYPE_CHECKING:
    from .problem import QPData


@dataclass
class _NullSpace:
    """The equality constraints eliminated once per solve: ``A^T = Y R``, ``U = [Y | N]`` orthogonal, ``AN = 0``."""

    U: Tensor  # (B, n, n) [Y | N]
    R: Tensor  # (B, p, p) upper triangular
    Y: Tensor  # (B, n, p) contiguous copies of the two blocks of U
    N: Tensor  # (B, n, k)
    Gr: Tensor  # (B, m, k) G N   (k = n - p)
    GY: Tensor  # (B, m, p) G Y
    Qr: Tensor  # (B, k, k) N' Qs N
    NtQ: Tensor  # (B, k, n) N' Qs


@dataclass
class _PairedRows:
    r"""Two-sided constraints ``l <= g'z <= u`` in a shared ``G`` (rows ``g_j = -g_i``, e.g. box bounds).

    Their Hessian terms merge, :math:`d_i g_i g_i^\top + d_j g_j g_j^\top = (d_i + d_j) g_i g_i^\top`, so
    :math:`G^\top D G = G_r^\top \mathrm{diag}(d_r + d_{\mathrm{partner}}) G_r` over the representative rows
    only (half the GEMM for box constraints).
    """

    reps: Tensor  # (r,) representative rows (one per pair, and every unpaired row)
    partner: Tensor  # (r,) the partner row of each representative; m (a zero column) if unpaired
    G: Tensor  # (B, r, n) G[reps] (shared view)
    Gr: Tensor | None  # (B, r, k) (G N)[reps] in null-space mode (shared view)

    def weights(self, d: Tensor) -> Tensor:
        """``(B, r)``: ``d_rep + d_partner`` (``d_partner = 0`` for unpaired rows)."""
        dz = torch.cat([d, d.new_zeros(d.shape[0], 1)], dim=-1)
        return d.index_select(-1, self.reps) + dz.index_select(-1, self.partner)


def _paired_rows(x: QPData, ns: _NullSpace | None) -> _PairedRows | None:
    """Detect two-sided rows of a shared, constant ``G`` (exact negatives; None if fewer than m/4 pairs)."""
    G = x.G
    m = G.shape[-2]
    if m < 2 or not _shared(G) or (torch.is_grad_enabled() and G.requires_grad):
        return None  # merging would route the gradient of row j into row i under do.Unroll()
    G0 = G[0].detach()
    classes, inv = torch.unique(torch.cat([G0, -G0]), dim=0, return_inverse=True)
    a, b = inv[:m], inv[m:]  # class of g_i, class of -g_j
    if torch.unique(a).numel() < m:  # repeated rows: keep the general path
        return None
    first = torch.full((classes.shape[0],), -1, dtype=torch.int64, device=G.device)
    first[a] = torch.arange(m, device=G.device)
    partner = first[b]  # partner[j] = i with g_i = -g_j, or -1
    idx = torch.arange(m, device=G.device)
    partner = torch.where(partner == idx, -1, partner)  # a zero row is its own negative: not a pair
    reps = idx[(partner < 0) | (idx < partner)]
    if m - reps.numel() < m // 4:
        return None
    part = partner[reps]
    part = torch.where(part < 0, m, part)
    B = G.shape[0]
    Gr = None
    if ns is not None:  # G N pairs up the same way, per instance
        Gr = ns.Gr[0, reps].expand(B, -1, -1) if _shared(ns.Gr) else ns.Gr[:, reps]
    return _PairedRows(reps, part, G0[reps].expand(B, -1, -1), Gr)


@dataclass(frozen=True)
class QPGuards:
    """The numerical guards of the QP code, for one dtype (:func:`qp_guards`). A literal such as ``1e-300`` is
    ``0`` in float32 (and ``1e200`` does not convert to it), so every guard is derived from ``torch.finfo``.

    Attributes:
        tiny: floor of a norm, ``mu`` or a multiplier before dividing by it (``finfo.tiny``, the smallest normal
            number: 2.2e-308 in float64, 1.2e-38 in float32), so ``0 / 0`` gives ``0``, not NaN.
        huge: a large but finite value (``sqrt(finfo.max)``: 1.3e154 / 1.8e19): the step to the boundary where
            nothing blocks it (any value above 1: steps are capped at 1), and the cap of the adjoint's
            ``E = s / lam``, whose product with an exact ``0`` must stay ``0`` (``inf * 0`` is NaN) and whose
            product with an order-one number must not overflow.
        min_scale: floor of the scale of a matrix that sets a relative diagonal shift (``1e-30``, normal in
            float32 and float64; ``finfo.tiny / finfo.eps`` in the narrower formats), so the shift is never 0.
    """

    tiny: float
    huge: float
    min_scale: float


@lru_cache
def qp_guards(dtype: torch.dtype) -> QPGuards:
    """:class:`QPGuards` for ``dtype`` (a floating-point dtype)."""
    fi = torch.finfo(dtype)
    return QPGuards(tiny=float(fi.tiny), huge=float(fi.max) ** 0.5, min_scale=max(1e-30, float(fi.tiny / fi.eps)))


_shared, _mv, _mtv = is_shared, bmv, bmtv
_NATIVE_BUDGET = 1  # the C kernel's status code for a spent iteration budget (solvers/_native/qp_ipm.c)


def _inf(v: Tensor) -> Tensor:
    return v.abs().amax(-1) if v.shape[-1] > 0 else v.new_zeros(v.shape[0])


_OUTER_TABLE_MAX = 1 << 22  # entries (32 MB in float64) of the outer-product table of a shared G


def _hessian(Qs: Tensor, G: Tensor, d: Tensor, table: Tensor | None = None) -> Tensor:
    """``Qs + G^T diag(d) G`` per instance.

    Per-instance ``G``: one batched GEMM (``D G`` keeps ``G``'s layout; its transpose is a free view, which
    runs ~1.8x faster than scaling ``G^T``). Shared ``G`` with its outer-product table ``T`` (row ``i`` is
    ``g_i g_i^T`` flattened, :func:`_outer_table`): one plain GEMM ``d T`` of shape ``(B, m) x (m, k^2)``,
    2-5x faster than the batch of ``k x m x k`` products it replaces.
    """
    if G.shape[-2] == 0:
        return Qs.clone()
    if _shared(G):
        if table is not None:
            k = G.shape[-1]
            return Qs + (d @ table).view(d.shape[0], k, k)
        G0 = G[0]
        return Qs + (G0.transpose(0, 1) * d[:, None, :]) @ G0
    return torch.baddbmm(Qs, (G * d[..., None]).transpose(-1, -2), G)


def _outer_table(G: Tensor) -> Tensor | None:
    """``(m, k^2)`` table of ``g_i g_i^T`` for a shared, constant ``G`` (None if too large or differentiated)."""
    if not _shared(G) or (torch.is_grad_enabled() and G.requires_grad):
        return None
    m, k = G.shape[-2:]
    if m * k * k > _OUTER_TABLE_MAX:
        return None
    G0 = G[0]
    return (G0[:, :, None] * G0[:, None, :]).reshape(m, k * k)


_sym = sym


def _chol_solve(L: Tensor, R: Tensor) -> Tensor:
    """``(L L^T)^{-1} R`` by two triangular solves (faster than ``cholesky_solve`` for CPU batches)."""
    y = torch.linalg.solve_triangular(L, R, upper=False)
    return torch.linalg.solve_triangular(L.transpose(-1, -2), y, upper=True)


def _step_to_boundary(v: Tensor, dv: Tensor) -> Tensor:
    """Largest ``a > 0`` with ``v + a dv >= 0`` per instance (``v > 0``); :attr:`QPGuards.huge` where no
    component blocks the step (callers cap steps at 1)."""
    huge = qp_guards(v.dtype).huge
    if v.shape[-1] == 0:
        return v.new_full(v.shape[:1], huge)
    # min over dv_i < 0 of -v_i / dv_i = -1 / min_i(dv_i / v_i): elementwise work is one division (a masked
    # select over (B, m) costs 5x a division on CPU); the inner where keeps -1 / r and its gradient finite
    r = (dv / v).amin(-1)
    neg = r < 0
    return torch.where(neg, -1.0 / torch.where(neg, r, -1.0), huge)


def _take(t: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` of a batched tensor; a matrix shared by the batch stays an expanded view (no copy)."""
    if _shared(t):
        return t[:1].expand(idx.shape[0], *t.shape[1:])
    return t.index_select(0, idx)


def _mm(X: Tensor, Y: Tensor) -> Tensor:
    """Batched ``X @ Y``; the product of two matrices shared by the batch stays a shared (expanded) view."""
    if _shared(X) and _shared(Y):
        return (X[0] @ Y[0]).expand(X.shape[0], X.shape[1], Y.shape[2])
    if _shared(X):
        return X[0] @ Y
    if _shared(Y):
        return X @ Y[0]
    return X @ Y


def _qr(A: Tensor) -> tuple[Tensor, Tensor]:
    """Complete QR ``A^T = U [R; 0]`` per instance: ``U (B, n, n)``, ``R (B, p, p)`` (deterministic, so the
    backward pass recomputes exactly the basis the forward pass used)."""
    B, p, n = A.shape
    At = A.detach().transpose(-1, -2)
    if _shared(A):
        U0, R0 = torch.linalg.qr(At[0], mode="complete")
        return U0.expand(B, n, n), R0[:p].expand(B, p, p)
    U, R = torch.linalg.qr(At, mode="complete")
    return U, R[:, :p]


def _null_space(x: QPData, Qs: Tensor) -> _NullSpace | None:
    """QR of ``A^T`` (once per solve); ``None`` if some ``A`` is (numerically) rank deficient."""
    p, n = x.p, x.n
    B = x.q.shape[0]
    U, R = _qr(x.A)
    diag = (R[:1] if _shared(R) else R).diagonal(dim1=-2, dim2=-1).abs()
    rtol = float(torch.finfo(x.q.dtype).eps) ** 0.5
    if not bool((diag.amin(-1) > rtol * diag.amax(-1).clamp_min(qp_guards(diag.dtype).tiny)).all()):
        return None
    if _shared(U):
        Y, N = U[0, :, :p].contiguous().expand(B, n, p), U[0, :, p:].contiguous().expand(B, n, n - p)
    else:
        Y, N = U[..., :p].contiguous(), U[..., p:].contiguous()
    NtQ = _mm(N.transpose(-1, -2), Qs)
    return _NullSpace(U, R, Y, N, _mm(x.G, N), _mm(x.G, Y), _mm(NtQ, N), NtQ)


def data_key(x: QPData) -> tuple:
    """Identity and version of the QP's tensors: constants built for them are valid only while this is equal."""
    return tuple((id(t), t._version) for t in (x.Q, x.q, x.A, x.b, x.G, x.h))


def default_shift(dtype: torch.dtype) -> float:
    """The default relative diagonal shift ``delta = eps**0.75`` of the reduced KKT matrices (1.9e-12 in
    float64, 6.4e-6 in float32)."""
    return float(torch.finfo(dtype).eps) ** 0.75


class QPConstants:
    r"""What a QP solve computes once from its data and reuses in every iteration, the polish and the backward.

    Built by :func:`qp_constants` (in :meth:`QP.init <doubleopt.solvers.QP.init>`), carried in the solver state
    (:attr:`QPState.consts <doubleopt.solvers.qp.QPState>`) and passed explicitly to the reduced system, the
    interior-point iterations and the KKT backward.

    Attributes:
        Qs: ``(B, n, n)`` symmetric part of ``Q`` (an expanded view when ``Q`` is shared by the batch).
        shift: ``(B,)`` diagonal shift :math:`\delta \max(1, \max_i |Q_{ii}|)` of the reduced matrix.
        qn, bn, hn: ``(B,)`` residual scales :math:`1 + \|q\|_\infty` (and the same for ``b``, ``h``).
        ns: the null space of the equalities (null-space mode), else ``None``.
        pairs: the two-sided rows of a shared ``G`` (:class:`_PairedRows`), else ``None``.
        tables: the outer-product tables of a shared ``G`` used in :math:`G^\top D G`, per mode (built on first
            use; they do not depend on the batch).
        key: :func:`data_key` of the data they were built from.

    A plain class rather than a dataclass on purpose: the solve loop indexes, selects and copies every tensor of a
    state (a dataclass of tensors) instance by instance, and these constants must travel through it as one value
    (``tables`` and ``pairs.reps`` are not batch-first). The state's ``rows`` says which of their instances each
    state row uses; :meth:`rows_for` hands out that subset.
    """

    __slots__ = ("Qs", "shift", "qn", "bn", "hn", "ns", "pairs", "tables", "key", "_arange", "_subset")

    def __init__(self, Qs: Tensor, shift: Tensor, qn: Tensor, bn: Tensor, hn: Tensor, ns: _NullSpace | None = None,
                 pairs: _PairedRows | None = None, tables: dict | None = None, key: tuple = ()):
        self.Qs, self.shift, self.qn, self.bn, self.hn = Qs, shift, qn, bn, hn
        self.ns, self.pairs = ns, pairs
        self.tables = {} if tables is None else tables
        self.key = key
        self._arange: Tensor | None = None
        self._subset: tuple[Tensor, QPConstants] | None = None

    @property
    def batch(self) -> int:
        return self.shift.shape[0]

    def table(self, mode: str, G: Tensor) -> Tensor | None:
        """The outer-product table of ``G`` (:func:`_outer_table`), built once per solve and mode; ``None`` while
        autograd differentiates through ``G`` (a table built without a graph, e.g. by the cold start under
        ``no_grad``, must not stand in for ``G`` in a differentiated iteration)."""
        if torch.is_grad_enabled() and G.requires_grad:
            return None
        if mode not in self.tables:
            self.tables[mode] = _outer_table(G)
        return self.tables[mode]

    def take(self, idx: Tensor) -> QPConstants:
        """The constants of instances ``idx`` (matrices shared by the batch stay shared views)."""
        ns = None
        if self.ns is not None:
            ns = _NullSpace(*(_take(getattr(self.ns, f.name), idx) for f in fields(self.ns)))
        pairs = None
        if self.pairs is not None:
            p = self.pairs
            pairs = _PairedRows(p.reps, p.partner, _take(p.G, idx), _take(p.Gr, idx) if p.Gr is not None else None)
        return QPConstants(_take(self.Qs, idx), *(t.index_select(0, idx) for t in (self.shift, self.qn, self.bn,
                           self.hn)), ns=ns, pairs=pairs, tables=self.tables)

    def identity_rows(self) -> Tensor:
        """``arange(batch)``: the ``rows`` of a state that uses every instance in order."""
        if self._arange is None:
            self._arange = torch.arange(self.batch, device=self.shift.device)
        return self._arange

    def rows_for(self, rows: Tensor) -> QPConstants:
        """The constants of a state whose instances are ``rows`` of these: ``self`` for every row in order, else
        :meth:`take` (the last subset is kept, so a compacted loop gathers the null space once, not every step)."""
        if rows.shape[0] == self.batch and torch.equal(rows, self.identity_rows()):
            return self
        if self._subset is not None and self._subset[0].shape == rows.shape and torch.equal(self._subset[0], rows):
            return self._subset[1]
        sub = self.take(rows)
        self._subset = (rows, sub)
        return sub


def qp_constants(x: QPData, delta: float, equality: str = "auto") -> QPConstants:
    """The per-solve constants of the QPs ``x`` (see :class:`QPConstants`) for the relative shift ``delta``.

    ``equality``: ``"schur"`` keeps the equalities in the Schur complement; otherwise they are eliminated in the
    null space where that applies: a full-row-rank ``A`` with ``p < n`` that autograd does not differentiate
    through the iterations (the complete QR has no derivative; ``Unroll`` w.r.t. ``A`` uses the Schur complement).
    """
    Qs = _sym(x.Q)
    diag = Qs[:1] if _shared(Qs) else Qs
    scale = diag.diagonal(dim1=-2, dim2=-1).detach().abs().amax(-1).clamp_min(1.0).expand(x.q.shape[0])
    c = QPConstants(Qs, delta * scale, 1 + _inf(x.q.detach()), 1 + _inf(x.b.detach()), 1 + _inf(x.h.detach()),
                    key=data_key(x))
    if equality != "schur" and 0 < x.p < x.n and not (torch.is_grad_enabled() and x.A.requires_grad):
        c.ns = _null_space(x, Qs)
    c.pairs = _paired_rows(x, c.ns)
    return c


def cholesky_shifted(H: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Cholesky of ``H + shift I`` (``H`` fresh, shifted in place): ``(L, ok)``; larger shifts where it fails."""
    H.diagonal(dim1=-2, dim2=-1).add_(shift[:, None])
    L, info = torch.linalg.cholesky_ex(H)
    ok = info == 0
    if bool(ok.all()):  # the common case: one synchronization, no fix-up
        return L, ok
    # rare (ill-conditioned H near the solution, mostly float32): larger shifts, on the failed instances only
    eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
    bad = torch.nonzero(~ok).flatten()
    Hb, extra = H.index_select(0, bad), shift.index_select(0, bad)
    Lb, okb = eye.expand_as(Hb), torch.zeros_like(bad, dtype=torch.bool)
    for _ in range(3):
        extra = extra * 1e3
        L2, info2 = torch.linalg.cholesky_ex(Hb + extra[:, None, None] * eye)
        Lb = torch.where(okb[:, None, None], Lb, L2)
        okb = okb | (info2 == 0)
        if bool(okb.all()):
            break
    Lb = torch.where(okb[:, None, None], Lb, eye.expand_as(Lb))
    return L.index_copy(0, bad, Lb), ok.index_copy(0, bad, okb)


def factor(c: QPConstants, x: QPData, d: Tensor, delta: float):
    """Factor the reduced KKT matrix at scaling ``d``: ``(L, W, LM, ok)`` (see :func:`_kkt_solve`).

    Null-space mode: ``N' (Qs + G' D G) N + shift I`` (``k x k``). Schur mode: ``H = Qs + G' D G + shift I``
    and the Schur complement ``M = A H^{-1} A' + delta * scale(M) I``.
    """
    B, n = x.q.shape
    if c.ns is not None:
        paired = c.pairs is not None and c.pairs.Gr is not None
        Gh, dh = (c.pairs.Gr, c.pairs.weights(d)) if paired else (c.ns.Gr, d)
        L, ok = cholesky_shifted(_hessian(c.ns.Qr, Gh, dh, c.table("ns", Gh)), c.shift)
        return L, x.q.new_zeros(B, n, 0), x.q.new_zeros(B, 0, 0), ok  # U, R stay in the constants
    Gh, dh = (c.pairs.G, c.pairs.weights(d)) if c.pairs is not None else (x.G, d)
    L, ok = cholesky_shifted(_hessian(c.Qs, Gh, dh, c.table("full", Gh)), c.shift)
    if x.p == 0:
        return L, x.q.new_zeros(B, n, 0), x.q.new_zeros(B, 0, 0), ok
    At = x.A.transpose(-1, -2)
    W = _chol_solve(L, At.expand(B, n, x.p) if _shared(x.A) else At)
    M = x.A @ W
    mscale = M.diagonal(dim1=-2, dim2=-1).detach().abs().amax(-1).clamp_min(qp_guards(M.dtype).min_scale)
    LM, ok2 = cholesky_shifted(M, delta * mscale)
    return L, W, LM, ok & ok2


def cold_start(x: QPData, c: QPConstants, delta: float) -> Tensor:
    """The CVXOPT initial primal point: ``argmin 1/2 z'Qz + q'z + 1/2 ||h - Gz||^2`` s.t. ``Az = b`` (one
    factorization of the reduced matrix at ``D = I``; ``0`` where it fails)."""
    B = x.q.shape[0]
    ones = x.q.new_ones(B, x.m)
    L, W, LM, ok = factor(c, x, ones, delta)
    r1 = -x.q + (_mtv(x.G, x.h) if x.m > 0 else 0.0)
    ur = (c.ns.U, c.ns.R) if c.ns is not None else None
    z, _ = _kkt_solve(L, W, LM, c.Qs, x.A, x.G, ones, r1, x.b, ur)
    return torch.where(ok[:, None], z, torch.zeros_like(z))


def _hvp(Qs: Tensor, G: Tensor, d: Tensor, v: Tensor) -> Tensor:
    """``(Qs + G' D G) v`` by products."""
    out = _mv(Qs, v)
    return out + _mtv(G, d * _mv(G, v)) if G.shape[-2] > 0 else out


def _ls_multipliers(ns: _NullSpace, r: Tensor) -> tuple[Tensor, Tensor]:
    """Null-space mode: ``(nu, Y' r)`` with ``nu = -R^{-1} Y' r`` the least-squares equality multipliers for
    ``r = Qz + q + G'lam`` (``A' = Y R``), so that ``r + A' nu = (I - Y Y') r``."""
    Ytr = _mtv(ns.Y, r)
    return -torch.linalg.solve_triangular(ns.R, Ytr[..., None], upper=True)[..., 0], Ytr


def _kkt_solve(L, W, LM, Qs: Tensor, A: Tensor, G: Tensor, d: Tensor, r1: Tensor, r2: Tensor,
               ur: tuple[Tensor, Tensor] | None = None):
    """Solve ``H dz + A' dnu = r1, A dz = r2`` (``H = Qs + G' D G``) with the stored factors.

    Schur-complement mode (``L`` is ``n x n``): ``L L' = H``, ``W = H^{-1} A'``, ``LM LM' = A W``.
    Null-space mode (``L`` is ``k x k``, ``k = n - p``): ``L L' = N' H N`` and ``ur = (U, R)`` from
    :func:`_qr` (``U = [Y | N]``, ``A' = Y R``); then ``dz = Y R^{-T} r2 + N u`` and
    ``dnu = R^{-1} Y' (r1 - H dz)``.
    """
    n = r1.shape[-1]
    if L.shape[-1] == n:
        u = _chol_solve(L, r1[..., None])[..., 0]
        if A.shape[-2] == 0:
            return u, r1.new_zeros(r1.shape[0], 0)
        dnu = _chol_solve(LM, (_mv(A, u) - r2)[..., None])[..., 0]
        return u - (W @ dnu[..., None])[..., 0], dnu
    U, R = _qr(A) if ur is None else ur
    p = R.shape[-1]
    Y, N = U[..., :p], U[..., p:]
    w = torch.linalg.solve_triangular(R.transpose(-1, -2), r2[..., None], upper=False)[..., 0]
    dzp = _mv(Y, w)
    u = _chol_solve(L, _mtv(N, r1 - _hvp(Qs, G, d, dzp))[..., None])[..., 0]
    dz = dzp + _mv(N, u)
    dnu = torch.linalg.solve_triangular(R, _mtv(Y, r1 - _hvp(Qs, G, d, dz))[..., None], upper=True)[..., 0]
    return dz, dnu
