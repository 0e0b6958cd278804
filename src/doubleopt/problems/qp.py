r"""Convex quadratic programs as batched problems, and seeded QP families.

A batch of QPs

.. math:: \min_z \tfrac12 z^\top Q z + q^\top z \quad \text{s.t.} \quad A z = b,\; G z \le h

lives in a :class:`QPData` context (batch dimension first; ``p = 0`` equalities or ``m = 0`` inequalities
are empty tensors). :class:`QPProblem` is the :class:`~doubleopt.Problem` that
:class:`doubleopt.solvers.QP` (a batched primal-dual interior-point method) solves through
:func:`doubleopt.solve`; :func:`doubleopt.qp_solve` builds both from plain tensors.

Families (seeded ``sample``):

* :class:`RandomQP`: random *feasible* and bounded QPs (strictly feasible point planted), the benchmark
  distribution of OptNet / qpth.
* :class:`PortfolioQP`: a parametric Markowitz portfolio, ``min gamma w'Sw - mu'w`` s.t. ``1'w = 1``,
  ``0 <= w <= w_max``; the shared risk model is fixed and only the expected returns ``mu`` vary per
  instance, which is what an amortized model ``mu -> w*`` (or a warm start) learns.

**Warm starts.** A context may carry a :class:`QPStart` ``(z, s, lam, nu)``, an initial primal-dual
point (primal ``z`` ``(B, n)``, slacks ``s = h - G z`` ``(B, m)``, inequality multipliers ``lam >= 0``
``(B, m)``, equality multipliers ``nu`` ``(B, p)``). ``QP`` then starts from it (``s`` and ``lam``
clipped to at least ``QP.warm_start_floor``) instead of its own cold start. ``Solution.state`` of a
QP solve is a :class:`~doubleopt.solvers.qp.QPState` whose ``s, lam, nu`` (with ``Solution.y`` as ``z``)
form exactly such a point; an amortized model predicts the four tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .._problem import ProblemFamily
from ..linalg._shared import bmtv, bmv, sym


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
    # solver-side constants (symmetrized Q, scales) computed once per solve; not a tensor leaf of the context
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

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
        if x.start is not None:
            return x.start.z
        from ..solvers.qp import QP

        with torch.no_grad():
            return QP().cold_start(x)

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
        """Hook used by ``do.Implicit()``: ``y`` made differentiable through the KKT conditions."""
        from ..solvers.qp import qp_kkt_differentiable

        return qp_kkt_differentiable(y, state, x)


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


class RandomQP(QPProblem):
    r"""Random feasible, bounded QPs (the OptNet / qpth benchmark distribution).

    ``Q = L L^T + eps I`` with Gaussian ``L``; ``G, A, q`` Gaussian; a point ``z0`` and slacks ``s0 > 0`` are
    drawn and ``b = A z0``, ``h = G z0 + s0``, so every instance is strictly feasible and (``Q`` positive
    definite) has a unique solution. ``shared_matrices=True`` shares ``Q, A, G`` across the batch (only
    ``q, b, h`` vary), as in a layer with fixed constraints.

    Example:
        >>> import doubleopt as do
        >>> fam = do.problems.RandomQP(n=10, m=20, p=3)
        >>> x = fam.sample(4, seed=0)
        >>> x.Q.shape, x.G.shape, x.A.shape
        (torch.Size([4, 10, 10]), torch.Size([4, 20, 10]), torch.Size([4, 3, 10]))
    """

    def __init__(self, n: int = 50, m: int = 100, p: int = 10, eps: float = 1e-1,
                 shared_matrices: bool = False, dtype: torch.dtype = torch.float64):
        super().__init__()
        if n < 1 or m < 0 or p < 0 or p > n:
            raise ValueError(f"need n >= 1, m >= 0, 0 <= p <= n; got n={n}, m={m}, p={p}")
        self.n, self.m, self.p, self.eps, self.shared, self.dtype = n, m, p, eps, shared_matrices, dtype
        self.dim = n

    def _sample(self, batch_size, generator):
        B, n, m, p = batch_size, self.n, self.m, self.p
        kw = {"generator": generator, "dtype": torch.float64}
        Bm = 1 if self.shared else B
        L = torch.randn(Bm, n, n, **kw)
        Q = L @ L.transpose(-1, -2) / n + self.eps * torch.eye(n, dtype=torch.float64)
        G = torch.randn(Bm, m, n, **kw)
        A = torch.randn(Bm, p, n, **kw)
        q = torch.randn(B, n, **kw)
        z0 = torch.randn(B, n, **kw)
        s0 = torch.rand(B, m, **kw) + 0.1
        if self.shared:
            Q, G, A = Q.expand(B, n, n), G.expand(B, m, n), A.expand(B, p, n)
        b = (A @ z0[..., None])[..., 0]
        h = (G @ z0[..., None])[..., 0] + s0
        t = {k: v.to(self.dtype) for k, v in dict(Q=Q, q=q, A=A, b=b, G=G, h=h).items()}
        return QPData(**t)


class PortfolioQP(QPProblem):
    r"""Parametric Markowitz portfolios: :math:`\min_w \gamma w^\top \Sigma w - \mu^\top w`
    s.t. :math:`\mathbf 1^\top w = 1,\ 0 \le w \le w_{\max}`.

    The covariance ``Sigma = F F^T + diag(d)`` (a factor model, seeded by ``model_seed``) and the bounds are
    shared; :meth:`sample` draws expected returns ``mu = mu_bar + sigma_mu * noise`` per instance. In QP
    form: ``Q = 2 gamma Sigma``, ``q = -mu``, ``A = 1^T``, ``b = 1``, ``G = [I; -I]``, ``h = [w_max 1; 0]``
    (``n`` variables, ``m = 2n`` inequalities, ``p = 1``). Use :meth:`returns` to read ``mu`` back.

    Warm starts: ``sol.state`` of a previous solve (``s``, ``lam``, ``nu``) plus ``sol.y`` form a
    :class:`QPStart`; ``data.with_start(QPStart(z, s, lam, nu))``.

    Example:
        >>> import doubleopt as do
        >>> fam = do.problems.PortfolioQP(n_assets=8)
        >>> x = fam.sample(16, seed=0)
        >>> w = do.solve(fam, do.solvers.QP(), x).y
        >>> bool(torch.allclose(w.sum(-1), torch.ones(16, dtype=w.dtype)))
        True
    """

    def __init__(self, n_assets: int = 20, n_factors: int = 3, gamma: float = 1.0, w_max: float = 0.3,
                 sigma_mu: float = 0.05, model_seed: int = 0, dtype: torch.dtype = torch.float64):
        super().__init__()
        if n_assets < 1 or w_max * n_assets < 1:
            raise ValueError(f"need n_assets >= 1 and w_max * n_assets >= 1, got {n_assets}, {w_max}")
        g = torch.Generator().manual_seed(model_seed)
        n = n_assets
        F = 0.2 * torch.randn(n, n_factors, generator=g, dtype=torch.float64)
        d = 0.01 + 0.04 * torch.rand(n, generator=g, dtype=torch.float64)
        Sigma = F @ F.T + torch.diag(d)
        mu_bar = 0.05 + 0.05 * torch.rand(n, generator=g, dtype=torch.float64)
        self.register_buffer("Q", (2 * gamma * Sigma).to(dtype))
        self.register_buffer("mu_bar", mu_bar.to(dtype))
        eye = torch.eye(n, dtype=dtype)
        self.register_buffer("G", torch.cat([eye, -eye]))
        upper = torch.full((n,), w_max, dtype=dtype)
        self.register_buffer("h", torch.cat([upper, torch.zeros(n, dtype=dtype)]))
        self.register_buffer("A", torch.ones(1, n, dtype=dtype))
        self.register_buffer("b", torch.ones(1, dtype=dtype))
        self.n, self.dim, self.sigma_mu, self.dtype = n, n, sigma_mu, dtype

    def context(self, mu: Tensor, start: QPStart | None = None) -> QPData:
        """The batch of QPs for expected returns ``mu`` ``(B, n)``."""
        return make_qp_data(self.Q, -mu, self.A, self.b, self.G, self.h, start=start)

    def returns(self, x: QPData) -> Tensor:
        """The expected returns ``mu`` ``(B, n)`` of a batch."""
        return -x.q

    def _sample(self, batch_size, generator):
        noise = torch.randn(batch_size, self.n, generator=generator, dtype=torch.float64).to(self.dtype)
        return self.context(self.mu_bar + self.sigma_mu * noise)


class MPCQP(QPProblem):
    r"""Linear model-predictive control: the QP of one MPC step, parametrized by the initial state ``x0``.

    .. math:: \min_{u, x}\ \sum_{t=0}^{T-1} r\,\|u_t\|^2 + w\,\|x_{t+1}\|^2 \quad \text{s.t.} \quad
       x_{t+1} = A x_t + B u_t,\ \ \|u_t\|_\infty \le u_{\max},\ \ \|x_{t+1}\|_\infty \le x_{\max},

    with :math:`x_0` given (the context). The system (seeded by ``model_seed``) is
    :math:`A = \rho\, e^{S}` with a random skew-symmetric :math:`S` (a lightly damped rotation of the state, so
    the uncontrolled system oscillates and does not decay fast) and a Gaussian :math:`B`; the input bound is
    tight, so the optimal inputs saturate for a state-dependent number of steps: the active set changes from
    instance to instance, which is what makes the family hard for an interior point started cold and a good
    test of warm starts. Initial states are drawn uniformly in the Euclidean ball of radius
    ``radius * x_max``; with :math:`\rho \le 1` the zero input keeps :math:`\|x_t\|_2 \le \|x_0\|_2`, so every
    instance is feasible.

    In QP form ``z = [u_0 .. u_{T-1}, x_1 .. x_T]`` (``n = T (n_u + n_x)``), ``Q = 2 diag(r, w)``, ``q = 0``,
    the dynamics are the ``p = T n_x`` equalities (``b = [A x0; 0; ...]``, the only data that vary) and the
    bounds are ``G = [I; -I]``, ``m = 2n``. :meth:`initial_states` reads ``x0`` back.

    Example:
        >>> import doubleopt as do
        >>> fam = do.problems.MPCQP(n_states=4, n_inputs=2, horizon=5)
        >>> x = fam.sample(8, seed=0)
        >>> (x.n, x.m, x.p), bool(do.solve(fam, do.solvers.QP(), x).successful.all())
        ((30, 60, 20), True)
    """

    def __init__(self, n_states: int = 6, n_inputs: int = 3, horizon: int = 10, u_max: float = 0.2,
                 x_max: float = 1.0, input_weight: float = 0.1, state_weight: float = 1.0, rho: float = 1.0,
                 radius: float = 1.0, model_seed: int = 0, dtype: torch.dtype = torch.float64):
        super().__init__()
        if min(n_states, n_inputs, horizon) < 1:
            raise ValueError(f"need n_states, n_inputs, horizon >= 1; got {n_states}, {n_inputs}, {horizon}")
        if not (0 < rho <= 1) or not (0 < radius <= 1):
            raise ValueError(f"need 0 < rho <= 1 and 0 < radius <= 1 (every instance feasible); got {rho}, {radius}")
        if not (u_max > 0 and x_max > 0 and input_weight > 0 and state_weight > 0):
            raise ValueError("u_max, x_max, input_weight and state_weight must be > 0")
        g = torch.Generator().manual_seed(model_seed)
        nx, nu, T = n_states, n_inputs, horizon
        S = torch.randn(nx, nx, generator=g, dtype=torch.float64)
        A = rho * torch.linalg.matrix_exp(0.3 * (S - S.T))
        Bm = torch.randn(nx, nu, generator=g, dtype=torch.float64) / nx**0.5
        n, p = T * (nu + nx), T * nx
        Aeq = torch.zeros(p, n, dtype=torch.float64)
        for t in range(T):
            rows = slice(t * nx, (t + 1) * nx)
            Aeq[rows, T * nu + t * nx:T * nu + (t + 1) * nx] = torch.eye(nx, dtype=torch.float64)
            Aeq[rows, t * nu:(t + 1) * nu] = -Bm
            if t > 0:
                Aeq[rows, T * nu + (t - 1) * nx:T * nu + t * nx] = -A
        weights = torch.cat([torch.full((T * nu,), input_weight), torch.full((T * nx,), state_weight)])
        bound = torch.cat([torch.full((T * nu,), u_max), torch.full((T * nx,), x_max)]).double()
        eye = torch.eye(n, dtype=torch.float64)
        self.register_buffer("system_A", A.to(dtype))
        self.register_buffer("system_B", Bm.to(dtype))
        self.register_buffer("Q", torch.diag(2 * weights).to(dtype))
        self.register_buffer("A", Aeq.to(dtype))
        self.register_buffer("G", torch.cat([eye, -eye]).to(dtype))
        self.register_buffer("h", torch.cat([bound, bound]).to(dtype))
        self.n_states, self.n_inputs, self.horizon = nx, nu, T
        self.x_max, self.radius, self.dtype = x_max, radius, dtype
        self.n = self.dim = n

    def context(self, x0: Tensor, start: QPStart | None = None) -> QPData:
        """The batch of MPC QPs for initial states ``x0`` ``(B, n_states)``."""
        if x0.dim() != 2 or x0.shape[-1] != self.n_states:
            raise ValueError(f"x0 must have shape (B, {self.n_states}), got {tuple(x0.shape)}")
        b = x0.new_zeros(x0.shape[0], self.A.shape[0])
        b[:, :self.n_states] = x0 @ self.system_A.T
        q = x0.new_zeros(x0.shape[0], self.n)
        return make_qp_data(self.Q, q, self.A, b, self.G, self.h, start=start)

    def initial_states(self, x: QPData) -> Tensor:
        """The initial states ``x0`` ``(B, n_states)`` of a batch."""
        return torch.linalg.solve(self.system_A, x.b[:, :self.n_states].T).T

    def _sample(self, batch_size, generator):
        nx = self.n_states
        d = torch.randn(batch_size, nx, generator=generator, dtype=torch.float64)
        r = torch.rand(batch_size, 1, generator=generator, dtype=torch.float64) ** (1.0 / nx)
        x0 = self.radius * self.x_max * r * d / d.norm(dim=-1, keepdim=True)
        return self.context(x0.to(self.dtype))


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
