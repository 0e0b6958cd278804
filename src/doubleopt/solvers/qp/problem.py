r"""The convex QP as a batched problem: its data (:class:`QPData`, :class:`QPStart`, :func:`make_qp_data`),
the :class:`QPProblem` protocol (with its cold start and its KKT hook for ``do.Implicit()``) and the KKT
certificate (:func:`qp_kkt_residual`).

.. math:: \min_z \tfrac12 z^\top Q z + q^\top z \quad \text{s.t.} \quad A z = b,\; G z \le h

These are the parts that both the solver (:mod:`.interior_point`, :mod:`.api`) and the problem families of
:mod:`doubleopt.problems.qp` need; they are re-exported there (``do.problems.QPData``, ...). The module builds
on :mod:`.reduced_system` and :mod:`.kkt_backward` only, never on the solver.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..._problem import ProblemFamily
from ...linalg._shared import bmtv, bmv, sym
from .kkt_backward import qp_kkt_differentiable
from .reduced_system import _take, cold_start, default_shift, qp_constants


@dataclass
class QPStart:
    """An initial primal-dual point for warm-starting the interior-point method (all batch-first)."""

    z: Tensor  # (B, n) primal
    s: Tensor | None = None  # (B, m) slacks h - G z (default: recomputed from z)
    lam: Tensor | None = None  # (B, m) inequality multipliers >= 0 (default: ones)
    nu: Tensor | None = None  # (B, p) equality multipliers (default: zeros)


@dataclass
class QPData:
    """A batch of QPs ``min 1/2 z'Qz + q'z  s.t.  Az = b, Gz <= h`` (shapes with batch first).

    ``Q (B, n, n)``, ``q (B, n)``, ``A (B, p, n)``, ``b (B, p)``, ``G (B, m, n)``, ``h (B, m)``; matrices
    shared by the batch may be ``expand`` ed views (no copy). ``start`` is an optional warm start.
    """

    Q: Tensor
    q: Tensor
    A: Tensor
    b: Tensor
    G: Tensor
    h: Tensor
    start: QPStart | None = None

    @property
    def n(self) -> int:
        return self.q.shape[-1]

    @property
    def m(self) -> int:
        return self.h.shape[-1]

    @property
    def p(self) -> int:
        return self.b.shape[-1]

    def with_start(self, start: QPStart | None) -> QPData:
        """The same QPs with a warm start (``None`` for a cold start)."""
        return replace(self, start=start)


def _as_batched(name: str, t: Tensor | None, B: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Broadcast ``t`` (shared, shape ``shape``, or per instance, ``(B, *shape)``) to ``(B, *shape)``."""
    if t is None:
        return like.new_zeros((B, *shape))
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if tuple(t.shape) == shape:
        return t.unsqueeze(0).expand(B, *shape)
    if tuple(t.shape) == (B, *shape):
        return t
    want = " x ".join(map(str, shape)) or "scalar"
    raise ValueError(f"{name} must have shape {shape} (shared by the batch) or {(B, *shape)} (one per "
                     f"instance; {want} each), got {tuple(t.shape)} (the sizes come from q: (B, n) = "
                     f"{tuple(like.shape)}, and from b, h for the numbers of constraints)")


def make_qp_data(Q: Tensor, q: Tensor, A: Tensor | None = None, b: Tensor | None = None,
                 G: Tensor | None = None, h: Tensor | None = None, start: QPStart | None = None) -> QPData:
    """Validate and broadcast QP matrices into a :class:`QPData` batch.

    Each of ``Q (n, n)``, ``q (n,)``, ``A (p, n)``, ``b (p,)``, ``G (m, n)``, ``h (m,)`` is either shared by
    the batch or has a leading batch dimension ``B`` (the largest leading dimension present; ``B = 1`` if all
    are shared). ``A``/``b`` and ``G``/``h`` come in pairs (both or neither).
    """
    for name, t in (("Q", Q), ("q", q)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if (A is None) != (b is None):
        raise ValueError("A and b come together: pass both (equality constraints Az = b) or neither")
    if (G is None) != (h is None):
        raise ValueError("G and h come together: pass both (inequality constraints Gz <= h) or neither")
    if q.dim() not in (1, 2):
        raise ValueError(f"q must have shape (n,) or (B, n), got {tuple(q.shape)}")
    n = q.shape[-1]
    if not q.is_floating_point():
        raise ValueError(f"q must be floating point, got {q.dtype}")
    dtype, device = q.dtype, q.device
    given = {"Q": Q, "q": q, "A": A, "b": b, "G": G, "h": h}
    for name, t in given.items():
        if t is not None:
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
            if t.dtype != dtype:
                raise ValueError(f"dtype mismatch: q is {dtype} but {name} is {t.dtype}; use one dtype")
            if t.device != device:
                raise ValueError(f"device mismatch: q is on {device} but {name} is on {t.device}")
    p = 0 if A is None else A.shape[-2] if A.dim() >= 2 else -1
    m = 0 if G is None else G.shape[-2] if G.dim() >= 2 else -1
    if p < 0 or m < 0:
        raise ValueError("A and G must be matrices (p, n) / (m, n) or batches (B, p, n) / (B, m, n)")
    base = {"Q": 2, "q": 1, "A": 2, "b": 1, "G": 2, "h": 1}
    batch_dims = {t.shape[0] for name, t in given.items() if t is not None and t.dim() == base[name] + 1}
    if len(batch_dims) > 1:
        raise ValueError(f"the batched inputs disagree on the batch size: {sorted(batch_dims)}")
    B = batch_dims.pop() if batch_dims else 1
    like = q
    data = QPData(
        Q=_as_batched("Q", Q, B, (n, n), like),
        q=_as_batched("q", q, B, (n,), like),
        A=_as_batched("A", A, B, (p, n), like),
        b=_as_batched("b", b, B, (p,), like),
        G=_as_batched("G", G, B, (m, n), like),
        h=_as_batched("h", h, B, (m,), like),
        start=start,
    )
    if p > n:
        raise ValueError(f"more equality constraints than variables (p = {p} > n = {n}); the equalities are "
                         "over-determined, remove redundant rows of A")
    return data


class QPProblem(ProblemFamily):
    r"""The batched convex QP :math:`\min_z \tfrac12 z^\top Q z + q^\top z` s.t. :math:`Az = b,\ Gz \le h`.

    The context is a :class:`QPData`. The objective is the quadratic (constraints are the solver's job), so
    :func:`doubleopt.solve` reports the objective value of the returned point. ``Q`` is used through its
    symmetric part.

    Differentiation: the stationarity condition of the unconstrained implicit adjoint does not hold at a
    constrained optimum, so the problem provides :meth:`implicit_solution`, which ``do.Implicit()`` calls to
    differentiate the KKT conditions instead (the OptNet equations, see :mod:`doubleopt.solvers.qp`).

    Args:
        psd_tol: ``Q`` must be positive semidefinite; ``Q + psd_tol * (1 + max|Q_ii|) I`` must have a Cholesky
            factor or :meth:`check_context` raises ``ValueError`` naming the instances.

    Example:
        >>> import torch, doubleopt as do
        >>> f64 = torch.float64
        >>> data = do.problems.make_qp_data(torch.eye(2, dtype=f64), -torch.ones(1, 2, dtype=f64),
        ...                                 G=torch.eye(2, dtype=f64), h=0.5 * torch.ones(2, dtype=f64))
        >>> sol = do.solve(do.problems.QPProblem(), do.solvers.QP(), data, tol=1e-10)
        >>> sol.y
        tensor([[0.5000, 0.5000]], dtype=torch.float64)
    """

    def __init__(self, psd_tol: float | None = None):
        super().__init__()
        self.psd_tol = psd_tol

    def objective(self, y: Tensor, x: QPData) -> Tensor:
        Qy = bmv(x.Q, y)
        return 0.5 * (y * Qy).sum(-1) + (x.q * y).sum(-1)

    def smooth_value_and_grad(self, y: Tensor, x: QPData):
        Qy = bmv(sym(x.Q), y)
        return 0.5 * (y * Qy).sum(-1) + (x.q * y).sum(-1), Qy + x.q

    def init(self, x: QPData) -> Tensor:
        """The primal start: ``x.start.z`` if the context carries a warm start, else the CVXOPT cold start
        (:func:`~doubleopt.solvers.qp.reduced_system.cold_start`, what ``QP().cold_start(x)`` returns)."""
        if x.start is not None:
            return x.start.z
        with torch.no_grad():
            delta = default_shift(x.q.dtype)
            return cold_start(x, qp_constants(x, delta), delta)

    def check_context(self, x: QPData) -> None:
        if not isinstance(x, QPData):
            raise ValueError(f"QPProblem expects a QPData context (see do.problems.make_qp_data), got "
                             f"{type(x).__name__}")
        B, n = x.q.shape
        shapes = {"Q": (B, n, n), "A": (B, x.p, n), "b": (B, x.p), "G": (B, x.m, n), "h": (B, x.m)}
        for name, shape in shapes.items():
            if tuple(getattr(x, name).shape) != shape:
                got = tuple(getattr(x, name).shape)
                raise ValueError(f"QPData.{name} must have shape {shape}, got {got}")
        if x.start is not None:
            st = x.start
            for name, t, shape in (("z", st.z, (B, n)), ("s", st.s, (B, x.m)), ("lam", st.lam, (B, x.m)),
                                   ("nu", st.nu, (B, x.p))):
                if t is not None and tuple(t.shape) != shape:
                    raise ValueError(f"QPStart.{name} must have shape {shape}, got {tuple(t.shape)}")
            if st.lam is not None and bool((st.lam < 0).any()):
                raise ValueError("QPStart.lam (inequality multipliers) must be >= 0")
        # an instance whose Q holds NaN or inf is not refused here: do.solve reports it as nonfinite (throw=False)
        # or names it among the non-finite instances (throw=True)
        bad = not_psd(x.Q, self.psd_tol) & torch.isfinite(x.Q).flatten(1).all(-1)
        if bool(bad.any()):
            idx = torch.nonzero(bad).flatten().tolist()
            more = " ..." if len(idx) > 10 else ""
            raise ValueError(f"Q is not positive semidefinite for instances {idx[:10]}{more}; the QP is not "
                             "convex. Fix Q or pass regularization=r > 0 to qp_solve to use Q + r I "
                             "(a different, convex problem)")

    def kkt_residual(self, y: Tensor, x: QPData) -> Tensor:
        r"""``(B,)`` optimality certificate of a primal-dual point (used by ``do.amortized.KKTResidual``).

        ``y`` is either a packed primal-dual point ``[z, s, lam, nu]`` ``(B, n + 2m + p)``
        (:func:`pack_start`) or a primal ``z`` ``(B, n)`` whose multipliers are taken from ``x.start``.
        See :func:`qp_kkt_residual` for the measure (the slacks ``s`` are not trusted: ``h - Gz`` is used).
        """
        n, m, p = x.n, x.m, x.p
        if y.dim() == 2 and y.shape[-1] == n + 2 * m + p:
            st = unpack_start(y, x)
            return qp_kkt_residual(x, st.z, st.lam, st.nu)
        if y.dim() == 2 and y.shape[-1] == n and x.start is not None and (m == 0 or x.start.lam is not None) \
                and (p == 0 or x.start.nu is not None):
            lam = x.start.lam if m > 0 else y.new_zeros(y.shape[0], 0)
            nu = x.start.nu if p > 0 else y.new_zeros(y.shape[0], 0)
            return qp_kkt_residual(x, y, lam, nu)
        raise ValueError(f"kkt_residual needs a primal-dual point: a packed [z, s, lam, nu] of width n + 2m + p = "
                         f"{n + 2 * m + p}, or z (width n = {n}) with x.start carrying lam and nu; got "
                         f"{tuple(y.shape)}")

    def implicit_solution(self, y: Tensor, state, x: QPData) -> Tensor:
        """Hook used by ``do.Implicit()``: ``y`` made differentiable through the KKT conditions
        (:func:`~doubleopt.solvers.qp.kkt_backward.qp_kkt_differentiable`, on the solver state's factorization)."""
        return qp_kkt_differentiable(y, state, x)


def take_qp_data(x: QPData, idx: Tensor) -> QPData:
    """Instances ``idx`` of a QP batch (no warm start); matrices shared by the batch stay shared views."""
    return QPData(*(_take(t, idx) for t in (x.Q, x.q, x.A, x.b, x.G, x.h)))


def not_psd(Q: Tensor, psd_tol: float | None = None) -> Tensor:
    """``(B,)`` bool: which ``Q`` are not positive semidefinite (a shifted Cholesky fails).

    Only one factorization is made when ``Q`` is an expanded view shared by the batch.
    """
    B = Q.shape[0]
    if B == 0:
        return torch.zeros(0, dtype=torch.bool, device=Q.device)
    tol = psd_tol if psd_tol is not None else (1e-10 if Q.dtype == torch.float64 else 1e-5)
    shared = Q.stride(0) == 0
    Qc = (Q[:1] if shared else Q).detach()
    n = Qc.shape[-1]
    if n == 0:
        return torch.zeros(B, dtype=torch.bool, device=Q.device)
    scale = 1.0 + Qc.diagonal(dim1=-2, dim2=-1).abs().amax(-1)
    S = Qc + Qc.transpose(-1, -2)  # 2 sym(Q) + 2 tol scale I: one temporary, factored in place of 0.5 (...)
    S.diagonal(dim1=-2, dim2=-1).add_((2 * tol * scale)[:, None])
    _, info = torch.linalg.cholesky_ex(S)
    finite = (S * 0).sum((-2, -1)) == 0  # NaN as soon as one entry is inf or NaN
    bad = (info != 0) | ~finite
    return bad.expand(B) if shared else bad


def pack_start(start: QPStart) -> Tensor:
    """A primal-dual point ``(z, s, lam, nu)`` as one ``(B, n + 2m + p)`` tensor ``[z, s, lam, nu]``.

    ``s``, ``lam`` and ``nu`` must be set (a :class:`QPStart` from a solution or a model).
    """
    if start.s is None or start.lam is None or start.nu is None:
        raise ValueError("pack_start needs a complete primal-dual point: QPStart with z, s, lam and nu set")
    return torch.cat([start.z, start.s, start.lam, start.nu], dim=-1)


def unpack_start(y: Tensor, x: QPData) -> QPStart:
    """Inverse of :func:`pack_start` for the sizes ``n, m, p`` of ``x`` (views, no copy)."""
    n, m, p = x.n, x.m, x.p
    if y.dim() != 2 or y.shape[-1] != n + 2 * m + p:
        raise ValueError(f"a packed primal-dual point [z, s, lam, nu] has width n + 2m + p = {n + 2 * m + p} "
                         f"(n={n}, m={m}, p={p}); got shape {tuple(y.shape)}")
    z, s, lam, nu = torch.split(y, [n, m, m, p], dim=-1)
    return QPStart(z, s, lam, nu)


def qp_kkt_residual(x: QPData, z: Tensor, lam: Tensor, nu: Tensor) -> Tensor:
    r"""``(B,)`` scaled KKT residual and duality gap of ``(z, lam, nu)`` for the QPs ``x``; 0 iff optimal.

    .. math:: \max\Big(\frac{\|Qz + q + G^\top\lambda + A^\top\nu\|_\infty}{1 + \|q\|_\infty},\
       \frac{\|Az - b\|_\infty}{1 + \|b\|_\infty},\ \frac{\|(Gz - h)_+\|_\infty}{1 + \|h\|_\infty},\
       \|(-\lambda)_+\|_\infty,\ \frac{|\lambda^\top(h - Gz) + \nu^\top(b - Az)|}{\max(m, 1)}\Big)

    The last term is the duality gap :math:`f(z) - g(\lambda, \nu)` (exact once the dual residual is 0)
    per inequality, on the scale of the interior point's :math:`\mu = s^\top\lambda / m`, so a solver
    tolerance and a certificate tolerance mean the same thing. Non-finite points give ``inf``.
    """
    B = z.shape[0]

    def inf(v: Tensor) -> Tensor:
        return v.abs().amax(-1) if v.shape[-1] > 0 else v.new_zeros(B)

    rd = bmv(sym(x.Q), z) + x.q
    gap = z.new_zeros(B)
    res = z.new_zeros(B)
    if x.m > 0:
        Gz = bmv(x.G, z)
        rd = rd + bmtv(x.G, lam)
        res = torch.maximum(res, inf((Gz - x.h).clamp_min(0)) / (1 + inf(x.h)))
        res = torch.maximum(res, inf((-lam).clamp_min(0)))
        gap = gap + (lam * (x.h - Gz)).sum(-1)
    if x.p > 0:
        req = bmv(x.A, z) - x.b
        rd = rd + bmtv(x.A, nu)
        res = torch.maximum(res, inf(req) / (1 + inf(x.b)))
        gap = gap - (nu * req).sum(-1)
    res = torch.maximum(res, inf(rd) / (1 + inf(x.q)))
    res = torch.maximum(res, gap.abs() / max(x.m, 1))
    return torch.where(torch.isfinite(res), res, torch.full_like(res, float("inf")))
