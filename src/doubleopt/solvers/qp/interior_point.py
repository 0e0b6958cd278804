"""The batched primal-dual interior-point solver (:class:`QP`) and its state (see :mod:`doubleopt.solvers.qp`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..._solution import RESULTS
from ..._solver import Solver
from ..._tree import tree_index, tree_index_copy, tree_where
from .. import _native
from .problem import QPData, QPProblem, QPStart, take_qp_data
from .reduced_system import (
    _NATIVE_BUDGET,
    QPConstants,
    _chol_solve,
    _hessian,
    _inf,
    _kkt_solve,
    _ls_multipliers,
    _mtv,
    _mv,
    _step_to_boundary,
    cholesky_shifted,
    cold_start,
    default_shift,
    factor,
    qp_constants,
    qp_guards,
)


@dataclass
class QPState:
    """Interior-point state; ``Solution.y`` is the primal ``z``.

    ``s, lam, nu`` with ``z`` are a warm start for a later solve (:class:`~doubleopt.problems.QPStart`).
    ``L, W, LM`` are the factorization at the current point, reused by the next step's predictor and
    corrector and by the backward pass: Schur mode ``H = L L^T``, ``W = H^{-1} A^T``, ``M = LM LM^T``;
    null-space mode ``N^T H N = L L^T`` (``L`` is ``(n-p) x (n-p)``; ``W``, ``LM`` empty).

    ``consts`` (:class:`~doubleopt.solvers.qp.reduced_system.QPConstants`) are computed once by ``init`` and
    carried unchanged; ``rows`` maps each row of the state to its instance there, so the loop's gathers (loop
    compaction, the replacement of failed rows) stay consistent with them. ``start`` and ``native_steps`` are
    what :meth:`QP.init` chose and ran; :func:`qp_solve` reports them (``Solution.stats``).
    """

    value: Tensor  # (B,) objective 1/2 z'Qz + q'z
    grad: Tensor  # (B, n) dual residual r_d = Qz + q + G'lam + A'nu
    s: Tensor  # (B, m) slacks
    lam: Tensor  # (B, m) inequality multipliers
    nu: Tensor  # (B, p) equality multipliers
    Gz: Tensor  # (B, m) G z (the inequality residual is Gz + s - h)
    req: Tensor  # (B, p) equality residual A z - b
    residual: Tensor  # (B,) scaled KKT residual (the stationarity measure)
    d: Tensor  # (B, m) the scaling lam / s of the factorization (clipped at 1 / shift)
    status: Tensor  # (B,) RESULTS code (0 = keep going)
    L: Tensor  # (B, n, n)
    W: Tensor  # (B, n, p); (B, n, 0) in null-space mode
    LM: Tensor  # (B, p, p); (B, 0, 0) in null-space mode
    consts: QPConstants  # the solve's constants (for every instance of the batch init saw)
    rows: Tensor  # (B,) int64: the instance of ``consts`` each row is (the loop gathers and swaps rows)
    start: Tensor  # (B, n) the primal point the iterations started from (init's choice)
    native_steps: Tensor | None  # (B,) int64: iterations the native kernel ran in init; None if it did not run

    def constants(self) -> QPConstants:
        """The constants of this state's instances (``consts`` itself unless the rows were gathered)."""
        return self.consts.rows_for(self.rows)



@dataclass(frozen=True)
class QP(Solver):
    """Batched primal-dual interior-point QP solver (Mehrotra predictor-corrector); see the module docstring.

    Use it with :class:`~doubleopt.problems.QPProblem` contexts (:class:`~doubleopt.problems.QPData`), or
    through :func:`qp_solve`.

    Args:
        shift: the relative diagonal shift ``delta`` of the reduced KKT matrices (default ``eps**0.75``:
            1.9e-12 in float64, 6.4e-6 in float32).
        step_fraction: fraction of the step to the boundary of ``s, lam >= 0``.
        divergence: iterates whose (scaled) norm exceeds this are tested for infeasibility/unboundedness
            certificates (default ``1e6`` in float64, ``1e4`` in float32).
        certificate_tol: tolerance of those certificates (default ``1e-6`` / ``1e-3``).
        warm_start_floor: ``s`` and ``lam`` of a warm start are clipped to at least this.
        skip_tol: instances whose scaled KKT residual is already ``<= skip_tol`` (or that carry a failure
            code) are not recomputed by ``step``: the loop has stopped them, so their new state would be
            discarded. Must be ``<=`` the loop's ``tol``; :func:`qp_solve` sets it to ``tol``. ``None``
            (default with :func:`doubleopt.solve`) recomputes every instance.
        compact_below: once fewer than this fraction of the batch is unfinished, the unfinished instances
            are gathered into a smaller batch: by the solve loop (``loop_compact_below``, outside autograd: one
            gather per level, constants carried by :meth:`take_context`), and, under autograd (``do.Unroll()``)
            with ``skip_tol``, by each step itself.
        refine: iterative-refinement steps of the corrector direction (products with the unreduced
            operator); 1 cuts the iterations to tol 1e-10 from up to 15 to up to 12 at n = 50.
        polish_below: with ``skip_tol``, an instance whose scaled KKT residual falls to ``<= polish_below``
            (but not yet ``<= skip_tol``) gets an active-set polish (:meth:`polish`, ``polish_rounds`` rounds);
            the polished point replaces the iterate where its exact KKT residual is ``<= skip_tol``, so the
            loop stops it (a wrong active-set guess fails that test and the interior point goes on). At
            n = 50, m = 100, p = 10 (B = 128, tol 1e-12) it cuts the iterations from max 17 / mean 11.9 to
            max 11 / mean 8.5, and the solutions are exact to rounding on the active set. Default: 1e-6 when
            computing in float64, 1e-2 in float32 (there, with ``tol=1e-5``, it takes the median solution
            error at the same size from 5e-4 to 2e-6). ``0`` turns it off.
        polish_rounds: refinement rounds of each polish (one factorization for all of them).
        equality: ``"auto"`` (null space when ``A`` has full row rank and is not differentiated through the
            iterations, else Schur complement), ``"nullspace"`` (the same, as a preference) or ``"schur"``.
        native: run the iterations in the compiled C kernel (:mod:`doubleopt.solvers._native`, built on first
            use with the machine's C compiler) where it applies: float64, ``m > 0``, ``skip_tol`` set (as
            :func:`qp_solve` does), outside autograd (the forward pass of ``do.Implicit()``; ``do.Unroll()``
            iterates in PyTorch), equalities eliminated in the null space (or none). The kernel runs the same
            iteration (same start, predictor-corrector, refinement, polish) one instance at a time in cache, on
            ``torch.get_num_threads()`` threads; ``init`` then rebuilds the state in PyTorch at its result, so
            the residual, the certificates, the result codes and the backward are the PyTorch ones, and any
            instance it leaves unconverged continues in PyTorch. ``True``: use it (raise if it cannot be built);
            ``False``: never; ``None`` (default): :func:`qp_solve` (and so ``QPLayer``) turns it on where it is
            available, a plain ``do.solve`` does not (a solver that wraps ``QP`` and calls its ``init`` must then
            also call :meth:`initial_iterate`). ``DOUBLEOPT_NATIVE=0`` turns it off everywhere.
        native_budget: iteration budget of the kernel (default 100; :func:`qp_solve` passes ``max_steps``);
            an instance that spends it stops with ``max_steps_reached``.
        own_start: :meth:`init` ignores the given start ``y`` when the context carries no warm start
            (``QPData.start``) and starts from its own: the native kernel's solution where the kernel runs, else
            :meth:`cold_start` computed with the solve's constants (one QR, not two). :func:`qp_solve` sets it;
            ``do.solve`` then passes a placeholder instead of calling ``QPProblem.init``. Default ``False``: start
            from ``y`` (``QPProblem.init``, the same cold start, unless ``do.solve`` gets a ``y0``).

    Example:
        >>> import torch, doubleopt as do
        >>> fam = do.problems.RandomQP(n=10, m=20, p=2)
        >>> sol = do.solve(fam, do.solvers.QP(), fam.sample(8, seed=0), tol=1e-9)
        >>> sol.summary(), int(sol.num_steps.max()) < 30
        ('8 successful', True)
    """

    shift: float | None = None
    step_fraction: float = 0.99
    divergence: float | None = None
    certificate_tol: float | None = None
    warm_start_floor: float = 1e-3
    skip_tol: float | None = None
    compact_below: float = 0.85
    refine: int = 1
    equality: str = "auto"
    polish_below: float | None = None
    polish_rounds: int = 2
    native: bool | None = None
    native_budget: int | None = None
    own_start: bool = False

    def __post_init__(self):
        if self.equality not in ("auto", "schur", "nullspace"):
            raise ValueError(f"equality must be 'auto', 'schur' or 'nullspace', got {self.equality!r}")

    def check_problem(self, problem) -> None:
        if not isinstance(problem, QPProblem):
            raise ValueError(f"QP solves do.problems.QPProblem (QPData contexts), not {type(problem)}")

    # ---- numerics -------------------------------------------------------------------------------------
    def _delta(self, x: QPData) -> float:
        if self.shift is not None:
            return float(self.shift)
        return default_shift(x.q.dtype)

    def constants(self, x: QPData) -> QPConstants:
        """The per-solve constants of ``x`` for this configuration (shift, equality mode); :meth:`init` computes
        them once and carries them in the state."""
        return qp_constants(x, self._delta(x), self.equality)

    def _polish_below(self, x: QPData) -> float:
        if self.polish_below is not None:
            return float(self.polish_below)
        return 1e-6 if x.q.dtype == torch.float64 else 1e-2

    def _cholesky(self, H: Tensor, shift: Tensor):
        """Cholesky of ``H + shift I`` (:func:`~.reduced_system.cholesky_shifted`)."""
        return cholesky_shifted(H, shift)

    def _factor(self, c: QPConstants, x: QPData, d: Tensor):
        """Factor the reduced KKT matrix at scaling ``d`` (:func:`~.reduced_system.factor`)."""
        return factor(c, x, d, self._delta(x))

    def _newton(self, st: QPState, x: QPData, c: QPConstants, rin: Tensor, t: Tensor, refine: int = 0,
                pre: dict | None = None, need_dz: bool = True):
        """The Newton direction for ``t = (lam * r_i - r_c) / s``: ``(dz, ds, dlam, dnu)``.

        ``refine`` steps of iterative refinement against the *unreduced* operator (``Q dz + G' dlam + A' dnu``
        evaluated by products, not through the formed ``H``, whose entries carry the error of ``D`` up to
        ``1 / shift``) recover the accuracy the ill-conditioned ``H`` loses near the solution.
        In null-space mode ``nu`` is not iterated (``dnu = 0``): :meth:`_state` sets it to its least-squares
        value. ``pre`` caches what the predictor and the corrector share. ``need_dz=False`` (the predictor, which
        uses only ``ds, dlam``) skips forming ``dz`` in null-space mode; the refinement stays in the
        ``k``-dimensional coordinates ``u`` (``dz = Y w + N u``).
        """
        if c.ns is not None:
            ns = c.ns
            pre = {} if pre is None else pre
            if "Ntrd" not in pre:
                w = torch.linalg.solve_triangular(ns.R.transpose(-1, -2), -st.req[..., None], upper=False)[..., 0]
                Yw = _mv(ns.Y, w)
                # N' Q dz = N'Q Y w + (N'QN) u: the refinement's products stay k x k
                pre.update(Ntrd=_mtv(ns.N, st.grad), Yw=Yw, GYw=_mv(ns.GY, w), NtQYw=_mv(ns.NtQ, Yw))
            Ntrd = pre["Ntrd"]
            u = _chol_solve(st.L, (-Ntrd - _mtv(ns.Gr, t))[..., None])[..., 0]
            Gdz = pre["GYw"] + _mv(ns.Gr, u)
            dl = st.d * Gdz + t
            for _ in range(refine):
                e = Ntrd + pre["NtQYw"] + _mv(ns.Qr, u) + _mtv(ns.Gr, dl)
                du = _chol_solve(st.L, -e[..., None])[..., 0]
                u = u + du
                Gdu = _mv(ns.Gr, du)
                Gdz = Gdz + Gdu
                dl = dl + st.d * Gdu
            dz = pre["Yw"] + _mv(ns.N, u) if need_dz else None
            return dz, -rin - Gdz, dl, torch.zeros_like(st.nu)
        r1 = -st.grad - _mtv(x.G, t)
        dz, dnu = _kkt_solve(st.L, st.W, st.LM, c.Qs, x.A, x.G, st.d, r1, -st.req)
        Gdz = _mv(x.G, dz)
        dl = st.d * Gdz + t
        for _ in range(refine):
            e1 = st.grad + _mv(c.Qs, dz) + _mtv(x.G, dl) + (_mtv(x.A, dnu) if x.p > 0 else 0.0)
            e2 = st.req + _mv(x.A, dz) if x.p > 0 else st.req
            ddz, ddnu = _kkt_solve(st.L, st.W, st.LM, c.Qs, x.A, x.G, st.d, -e1, -e2)
            dz, dnu = dz + ddz, dnu + ddnu
            Gddz = _mv(x.G, ddz)
            Gdz = Gdz + Gddz
            dl = dl + st.d * Gddz
        return dz, -rin - Gdz, dl, dnu

    def _state(self, z: Tensor, x: QPData, c: QPConstants, s, lam, nu, status, carry: QPState | tuple,
               Gz: Tensor | None = None, factored: tuple | None = None) -> QPState:
        """The state at ``(z, s, lam, nu)``: residuals, objective, factorization (``Gz`` if already known;
        ``factored = (d, L, W, LM, ok)`` if the factorization at scaling ``d`` is already known).
        ``carry``: the previous state, or ``(consts, rows, start, native_steps)``, whose bookkeeping
        fields the new state keeps."""
        Qz = _mv(c.Qs, z)
        value = 0.5 * (z * Qz).sum(-1) + (x.q * z).sum(-1)
        rd = Qz + x.q
        B = z.shape[0]
        if x.m > 0:
            rd = rd + _mtv(x.G, lam)
            Gz = _mv(x.G, z) if Gz is None else Gz
            d = (lam / s).clamp(max=1.0 / self._delta(x)) if factored is None else factored[0]
        else:
            Gz = d = z.new_zeros(B, 0)
        if x.p > 0:
            if c.ns is not None:  # least-squares multipliers: rd = (I - Y Y') (Qz + q + G' lam)
                nu, Ytr = _ls_multipliers(c.ns, rd)
                rd = rd - _mv(c.ns.Y, Ytr)
            else:
                rd = rd + _mtv(x.A, nu)
            req = _mv(x.A, z) - x.b
        else:
            req = z.new_zeros(B, 0)
        L, W, LM, ok = self._factor(c, x, d) if factored is None else factored[1:]
        with torch.no_grad():
            res = _inf(rd) / c.qn
            if x.p > 0:
                res = torch.maximum(res, _inf(req) / c.bn)
            if x.m > 0:
                res = torch.maximum(res, _inf(Gz + s - x.h) / c.hn)
                res = torch.maximum(res, (s * lam).sum(-1) / x.m)
            status = self._certificates(z, x, c, lam, nu, status)
            status = torch.where(ok | (status != 0), status, int(RESULTS.linear_solver_failed))
        if isinstance(carry, QPState):
            carry = (carry.consts, carry.rows, carry.start, carry.native_steps)
        return QPState(value, rd, s, lam, nu, Gz, req, res.detach(), d, status, L, W, LM, *carry)

    def _certificates(self, z, x: QPData, c: QPConstants, lam, nu, status) -> Tensor:
        r"""Infeasibility / unboundedness certificates, evaluated only for instances whose iterates diverge.

        Once the multipliers exceed ``1e3`` times the data's scale (before ``divergence``), the normalized
        multipliers are also projected onto :math:`\{(y, \nu): G_S^\top y + A^\top \nu = 0\}` (``S`` their
        support) and clipped to ``y >= 0`` (:func:`_projected_farkas`): an interior point on an infeasible
        problem can stall at the boundary before its multipliers diverge, with a ray that is a Farkas
        certificate up to a component the projection removes. The test on the projected ray is the same strict
        one, so it never certifies a feasible problem that the plain test would not."""
        dt = x.q.dtype
        big = self.divergence if self.divergence is not None else (1e6 if dt == torch.float64 else 1e4)
        eps = self.certificate_tol
        eps = eps if eps is not None else (1e-6 if dt == torch.float64 else 1e-3)
        z, lam, nu = z.detach(), lam.detach(), nu.detach()
        ny = torch.maximum(_inf(lam), _inf(nu))
        nz = _inf(z)
        scale_y = torch.maximum(c.hn, c.bn)
        cand_y = ny > big * scale_y
        ray_from = 1e3 if dt == torch.float64 else 1e2  # the projected Farkas ray is tried from here on
        cand_ray = (ny > ray_from * scale_y) & ~cand_y & (status == 0) if x.m > 0 else torch.zeros_like(cand_y)
        cand_z = nz > big * c.qn
        if not bool((cand_y | cand_z | cand_ray).any()):  # one synchronization; the certificates below are rare
            return status
        # dual ray (lam, nu) -> primal infeasible (Farkas)
        tiny = qp_guards(dt).tiny
        yl, yn = lam / ny.clamp_min(tiny)[:, None], nu / ny.clamp_min(tiny)[:, None]
        farkas = x.q.new_zeros(x.q.shape)
        supp = x.q.new_zeros(x.q.shape[0])
        if x.m > 0:
            farkas = farkas + _mtv(x.G, yl)
            supp = supp + (x.h * yl).sum(-1)
        if x.p > 0:
            farkas = farkas + _mtv(x.A, yn)
            supp = supp + (x.b * yn).sum(-1)
        pinf = cand_y & (_inf(farkas) <= eps * 10) & (supp < -eps)
        if bool(cand_ray.any()):
            idx = torch.nonzero(cand_ray).flatten()
            ok_ray = _projected_farkas(take_qp_data(x, idx), yl.index_select(0, idx), yn.index_select(0, idx), eps)
            pinf = pinf.index_copy(0, idx, ok_ray)
        # primal ray z -> unbounded
        dvec = z / nz.clamp_min(tiny)[:, None]
        ok = cand_z & (_inf(_mv(c.Qs.detach(), dvec)) <= eps * 10) & ((x.q * dvec).sum(-1) < -eps)
        if x.p > 0:
            ok = ok & (_inf(_mv(x.A, dvec)) <= eps * 10)
        if x.m > 0:
            ok = ok & (_mv(x.G, dvec).amax(-1) <= eps * 10)
        status = torch.where((status == 0) & pinf, int(RESULTS.infeasible), status)
        return torch.where((status == 0) & ok, int(RESULTS.unbounded), status)

    # ---- the solver protocol ------------------------------------------------------------------------
    def init(self, problem, y, x: QPData) -> QPState:
        """The first state: the solve's constants (:meth:`constants`, computed here once), the start (``y``; with
        ``own_start`` and no warm start in ``x``, :meth:`cold_start`; with the native kernel, its solution) and
        the slacks and multipliers there."""
        B, n = x.q.shape
        c = self.constants(x)
        status = torch.zeros(B, dtype=torch.int64, device=y.device)
        if self.uses_native(x, c):
            return self._native_init(x, c, status)
        if self.own_start and x.start is None:  # y is a placeholder (qp_solve): the cold start, with these constants
            with torch.no_grad():
                y = cold_start(x, c, self._delta(x))
        z = y
        carry = (c, c.identity_rows(), z, None)
        if x.start is not None:
            st = x.start
            s = st.s if st.s is not None else (x.h - _mv(x.G, z) if x.m > 0 else z.new_zeros(B, 0))
            s = s.clamp_min(self.warm_start_floor)
            lam = st.lam.clamp_min(self.warm_start_floor) if st.lam is not None else torch.ones_like(s)
            nu = st.nu if st.nu is not None else z.new_zeros(B, x.p)
            return self._state(z, x, c, s, lam, nu, status, carry)
        # primal start y (QPProblem.init: the CVXOPT cold start); slacks and multipliers as in CVXOPT:
        # s = h - Gz, lam = -s, both shifted to be > 0
        if x.m > 0:
            s = x.h - _mv(x.G, z)
            lam = -s
            a_p = (-s).amax(-1, keepdim=True)
            s = torch.where(a_p >= 0, s + 1 + a_p, s)
            a_d = (-lam).amax(-1, keepdim=True)
            lam = torch.where(a_d >= 0, lam + 1 + a_d, lam)
        else:
            s = lam = z.new_zeros(B, 0)
        return self._state(z, x, c, s, lam, z.new_zeros(B, x.p), status, carry)

    def uses_native(self, x: QPData, c: QPConstants | None = None) -> bool:
        """Whether :meth:`init` solves ``x`` with the native kernel (see ``native``; ``c``: the constants of ``x``,
        if already computed)."""
        if not self.native or self.skip_tol is None:
            return False
        if x.q.dtype != torch.float64 or x.m == 0 or x.q.device.type != "cpu" or torch.is_grad_enabled():
            return False
        if x.p > 0 and (c if c is not None else self.constants(x)).ns is None:
            return False
        if not _native.available():
            if self.native:
                raise RuntimeError("QP(native=True), but the native QP kernel could not be built (no C compiler, "
                                   "a failed build: see the warning, or DOUBLEOPT_NATIVE=0)")
            return False
        return True

    def _native_init(self, x: QPData, c: QPConstants, status: Tensor) -> QPState:
        r"""Solve in the C kernel, in null-space coordinates :math:`z = z_0 + N u` (:math:`z_0 = Y R^{-T} b`):
        :math:`\min \tfrac12 u^\top (N^\top Q N) u + (N^\top (Q z_0 + q))^\top u` s.t.
        :math:`(GN) u \le h - G z_0`; then the state (residuals, certificates, the factorization for the
        backward: at the polish's scaling where the kernel polished) is rebuilt here. The iterate goes to the
        loop through :meth:`initial_iterate` (``state.start``), the kernel's iteration counts to ``qp_solve``
        through ``state.native_steps``."""
        ns = c.ns
        if ns is not None:
            w = torch.linalg.solve_triangular(ns.R.transpose(-1, -2), x.b[..., None], upper=False)[..., 0]
            z0 = _mv(ns.Y, w)
            P, F, lin, g = ns.Qr, ns.Gr, _mv(ns.NtQ, z0) + _mtv(ns.N, x.q), x.h - _mv(ns.GY, w)
        else:
            z0, P, F, lin, g = None, c.Qs, x.G, x.q, x.h
        start = None
        if x.start is not None:
            zs = x.start.z
            u0 = _mtv(ns.N, zs - z0) if ns is not None else zs
            s0 = x.start.s if x.start.s is not None else g - _mv(F, u0)
            lam0 = x.start.lam if x.start.lam is not None else torch.ones_like(s0)
            start = (u0, s0.clamp_min(self.warm_start_floor), lam0.clamp_min(self.warm_start_floor))
        # the kernel hands an instance back once its multipliers reach the level from which _certificates tries
        # the projected Farkas ray (or its primal iterate the divergence level): PyTorch certifies or continues
        big = self.divergence if self.divergence is not None else 1e6
        ydiv = min(big, 1e3) * torch.maximum(c.hn, c.bn)
        budget = self.native_budget if self.native_budget is not None else 100
        u, s, lam, iters, polished, code, L, lok = _native.qp_ipm(
            P, lin, F, g, c.shift, c.qn, c.hn, ydiv, big * c.qn,
            tol=float(self.skip_tol), delta=self._delta(x), step_fraction=self.step_fraction, refine=self.refine,
            max_iter=budget, polish_below=self._polish_below(x), polish_rounds=self.polish_rounds, start=start)
        z = z0 + _mv(ns.N, u) if ns is not None else u
        bad = _native.unusable(code, iters, warm=start is not None)  # non-finite, no memory, failed first factor
        if bool(bad.any()):  # restart those from the PyTorch cold start (their s, lam are only placeholders here)
            z = torch.where(bad[:, None], cold_start(x, c, self._delta(x)), z)
            s, lam = torch.where(bad[:, None], 1.0, s), torch.where(bad[:, None], 1.0, lam)
            lok = lok & ~bad
        # the state's factorization (the kernel's): at the polish's scaling 1_A / sqrt(eps) where it polished (the
        # one the KKT backward needs at an exact active set, as in _polish_finish), else at lam / s
        act = (lam > s).to(s.dtype) / float(torch.finfo(s.dtype).eps) ** 0.5
        d = torch.where(polished[:, None], act, (lam / s).clamp(max=1.0 / self._delta(x)))
        B = x.q.shape[0]
        factored = (d, L, x.q.new_zeros(B, x.n, 0), x.q.new_zeros(B, 0, 0), lok)
        if not bool(lok.all()):  # rare (a failed kernel factorization, a restarted instance): factor here
            Lp, Wp, LMp, okp = self._factor(c, x, d)
            factored = (d, torch.where(lok[:, None, None], L, Lp), Wp, LMp, torch.where(lok, lok, okp))
        carry = (c, c.identity_rows(), z, iters.to(torch.int64))
        st = self._state(z, x, c, s, lam, x.q.new_zeros(B, x.p), status, carry, factored=factored)
        spent = (code == _NATIVE_BUDGET) & (st.status == 0) & (st.residual > self.skip_tol)
        return replace(st, status=torch.where(spent, int(RESULTS.max_steps_reached), st.status))

    def initial_iterate(self, problem, y: Tensor, x: QPData, state: QPState) -> Tensor:
        """The start :meth:`init` chose (``state.start``: ``y``, the cold start, or the native kernel's solution)."""
        return state.start

    def cold_start(self, x: QPData) -> Tensor:
        """The CVXOPT initial primal point: ``argmin 1/2 z'Qz + q'z + 1/2 ||h - Gz||^2`` s.t. ``Az = b``
        (:func:`~.reduced_system.cold_start`)."""
        return cold_start(x, self.constants(x), self._delta(x))

    @property
    def uses_start(self) -> bool:  # type: ignore[override]
        """``False`` with ``own_start``: ``do.solve`` then passes a placeholder ``y0`` rather than computing
        :meth:`QPProblem.init <doubleopt.problems.QPProblem.init>` (a cold start :meth:`init` would redo)."""
        return not self.own_start

    @property
    def loop_compact_below(self) -> float:  # type: ignore[override]
        """The solve loop gathers the unfinished instances (outside autograd) below ``compact_below``."""
        return self.compact_below

    def take_context(self, x: QPData, index: Tensor) -> QPData:
        """Instances ``index`` (shared matrices stay shared views). Their constants come along in the state
        (``rows``), so a compacted loop does not redo the QR / ``G N`` products."""
        xs = take_qp_data(x, index)
        if x.start is not None:
            xs = xs.with_start(tree_index(x.start, index))
        return xs

    def step(self, problem, z, x: QPData, st: QPState):
        c = st.constants()
        z, st = self._ipm_step(z, x, c, st)
        if self.skip_tol is not None and self._polish_below(x) > 0 and x.m > 0:
            z, st = self._polish_finish(z, x, c, st)
        return z, st

    def _ipm_step(self, z, x: QPData, c: QPConstants, st: QPState):
        if self.skip_tol is not None:
            active = (st.residual > self.skip_tol) & (st.status == 0)
            B = z.shape[0]
            k = int(active.sum())
            if k == 0:
                return z, st
            if k < self.compact_below * B:
                idx = torch.nonzero(active).flatten()
                zs, sts = self._step(z.index_select(0, idx), take_qp_data(x, idx), c.take(idx),
                                     tree_index(st, idx))
                return z.index_copy(0, idx, zs), tree_index_copy(st, idx, sts)
        return self._step(z, x, c, st)

    def _step(self, z: Tensor, x: QPData, c: QPConstants, st: QPState):
        if x.m == 0:  # equality-constrained or unconstrained: one Newton step is exact
            ur = (c.ns.U, c.ns.R) if c.ns is not None else None
            dz, dnu = _kkt_solve(st.L, st.W, st.LM, c.Qs, x.A, x.G, st.d, -st.grad, -st.req, ur)
            return z + dz, self._state(z + dz, x, c, st.s, st.lam, st.nu + dnu, st.status, st)
        s, lam = st.s, st.lam
        rin = st.Gz + s - x.h
        # predictor (affine scaling, r_c = s lam): t = (lam r_i - r_c) / s
        t_a = lam * rin / s - lam
        pre: dict = {}
        _, ds_a, dl_a, _ = self._newton(st, x, c, rin, t_a, 0, pre, need_dz=False)  # the predictor's dz is unused
        a_aff = torch.minimum(_step_to_boundary(s, ds_a), _step_to_boundary(lam, dl_a)).clamp(max=1.0)
        mu = (s * lam).sum(-1) / x.m
        mu_aff = ((s + a_aff[:, None] * ds_a) * (lam + a_aff[:, None] * dl_a)).sum(-1) / x.m
        sigma = (mu_aff / mu.clamp_min(qp_guards(mu.dtype).tiny)).clamp(0.0, 1.0) ** 3
        # corrector (centering + second-order term), same factorization:
        # r_c = s lam + ds_a dl_a - sigma mu
        t = t_a - (ds_a * dl_a - (sigma * mu)[:, None]) / s
        dz, ds, dl, dnu = self._newton(st, x, c, rin, t, self.refine, pre)
        a = torch.minimum(_step_to_boundary(s, ds), _step_to_boundary(lam, dl))
        a = (self.step_fraction * a).clamp(max=1.0)[:, None]
        z = z + a * dz
        Gz = st.Gz - a * (rin + ds)  # G (z + a dz), as G dz = -r_i - ds
        return z, self._state(z, x, c, s + a * ds, lam + a * dl, st.nu + a * dnu, st.status, st, Gz)

    def polish(self, x: QPData, start: QPStart, rounds: int = 2) -> QPStart:
        r"""Active-set polish of a primal-dual guess: the exact optimum if the guessed active set is right.

        Guess :math:`\mathcal A = \{i: \lambda_i > s_i\}` and solve the equality-constrained QP
        :math:`\min \tfrac12 z^\top Qz + q^\top z` s.t. :math:`Az = b,\ G_{\mathcal A} z = h_{\mathcal A}`
        (OSQP's solution polishing, Stellato et al. 2020): ``rounds`` steps of iterative refinement on its KKT
        conditions :math:`F = (Qz + q + G_{\mathcal A}^\top\lambda + A^\top\nu,\ G_{\mathcal A} z - h_{\mathcal A},
        \ Az - b) = 0` from the guess, each solving the regularized system :math:`K_\delta \Delta = -F` (a
        :math:`-\delta_p I` block on the active rows, :math:`\delta_p = \sqrt{\epsilon}`), that is, with
        :math:`D = \mathrm{diag}(1_{\mathcal A}) / \delta_p`,

        .. math:: (Q + G^\top D G)\, \Delta z + A^\top \Delta\nu = -r_d - G^\top D r_p,\quad A\Delta z = -r_e,
           \quad \Delta\lambda = D (G \Delta z + r_p).

        The first step lands on the quadratic-penalty solution, each further one shrinks the error by a factor
        of order :math:`\delta_p`; the residuals are evaluated exactly (products with ``Q, G, A``), so rounding
        in the stiff matrix does not limit the accuracy (machine precision after 2 rounds on the zoo's QPs).
        The matrix is the interior point's reduced KKT matrix
        at the scaling :math:`D`, factorized **once** by the same code (null-space or Schur mode), so a polish
        costs about one interior-point iteration, and nothing of size ``n + m``. Then :math:`s = h - Gz`.
        A wrong guess gives a point with :math:`\lambda_i < 0` or :math:`s_i < 0`: certify the result
        (:func:`~doubleopt.problems.qp.qp_kkt_residual`) before trusting it; instances whose factorization
        fails keep ``start``.
        """
        if x.m == 0 or start.s is None or start.lam is None:
            raise ValueError("polish needs inequality constraints and a start with s and lam")
        nu = start.nu if x.p > 0 else x.q.new_zeros(x.q.shape[0], 0)
        c = self.constants(x)
        z, s, lam, nu, _, factored, ok = self._polish(x, c, start.z, start.s, start.lam, nu, rounds)
        if x.p > 0 and factored[1].shape[-1] < x.n:  # null-space rounds: the least-squares multipliers
            nu, _ = _ls_multipliers(c.ns, _mv(c.Qs, z) + x.q + _mtv(x.G, lam))
        keep = (ok & torch.isfinite(z).all(-1) & torch.isfinite(lam).all(-1))[:, None]
        nu = nu if x.p > 0 else start.nu
        return QPStart(torch.where(keep, z, start.z), torch.where(keep, s, start.s),
                       torch.where(keep, lam, start.lam), torch.where(keep, nu, start.nu))

    def _polish(self, x: QPData, c: QPConstants, z: Tensor, s: Tensor, lam: Tensor, nu: Tensor, rounds: int = 2):
        """:meth:`polish` from ``(z, s, lam, nu)``: ``(z, h - Gz, lam, nu, Gz, (d, L, W, LM, ok), ok)``."""
        delta_p = float(torch.finfo(x.q.dtype).eps) ** 0.5
        act = (lam > s).to(x.q.dtype)
        d = act / delta_p
        L, W, LM, ok = self._factor(c, x, d)
        ur = (c.ns.U, c.ns.R) if c.ns is not None else None
        lam = lam * act
        Gz = _mv(x.G, z)
        if c.ns is not None and not (c.pairs is not None and c.pairs.Gr is not None):
            return self._polish_nullspace(x, c, z, lam, Gz, act, d, (L, W, LM, ok), rounds)
        for _ in range(max(rounds, 1)):
            rd = _mv(c.Qs, z) + x.q + _mtv(x.G, lam) + (_mtv(x.A, nu) if x.p > 0 else 0.0)
            rp = act * (Gz - x.h)
            re = _mv(x.A, z) - x.b if x.p > 0 else nu
            dz, dnu = _kkt_solve(L, W, LM, c.Qs, x.A, x.G, d, -rd - _mtv(x.G, d * rp), -re, ur)
            z, nu = z + dz, nu + dnu
            Gdz = _mv(x.G, dz)
            Gz = Gz + Gdz
            lam = lam + d * (Gdz + rp)
        return z, x.h - Gz, lam, nu, Gz, (d, L, W, LM, ok), ok

    def _polish_nullspace(self, x: QPData, c: QPConstants, z, lam, Gz, act, d, factors, rounds: int):
        r""":meth:`_polish`'s rounds in null-space coordinates: ``dz = Y w + N u`` with ``R^T w = -(Az - b)``,

        .. math:: L L^\top u = -N^\top Q (z + Y w) - N^\top q - (GN)^\top\big(\lambda + D(r_p + GY w)\big)

        (``N^T A^T = 0``), i.e. two passes over ``GN`` per round instead of about seven over ``G``; the
        multipliers ``nu`` are the least-squares ones (:meth:`_state`)."""
        ns = c.ns
        L = factors[0]
        Ntq = _mtv(ns.N, x.q)
        for _ in range(max(rounds, 1)):
            rp = act * (Gz - x.h)
            w = torch.linalg.solve_triangular(ns.R.transpose(-1, -2), (x.b - _mv(x.A, z))[..., None],
                                              upper=False)[..., 0]
            zp = z + _mv(ns.Y, w)
            Gdzp = _mv(ns.GY, w)
            rhs = _mv(ns.NtQ, zp) + Ntq + _mtv(ns.Gr, lam + d * (rp + Gdzp))
            u = _chol_solve(L, -rhs[..., None])[..., 0]
            Gdz = Gdzp + _mv(ns.Gr, u)
            z = zp + _mv(ns.N, u)
            lam = lam + d * (Gdz + rp)
            Gz = Gz + Gdz
        nu = x.q.new_zeros(x.q.shape[0], x.p)  # recomputed (least squares) by _state
        return z, x.h - Gz, lam, nu, Gz, (d, *factors), factors[-1]

    def _polish_finish(self, z: Tensor, x: QPData, c: QPConstants, st: QPState):
        """Polish the instances whose residual is in ``(skip_tol, polish_below]``; keep the certified ones.

        A polished point (clipped to ``s, lam >= 0``) replaces the iterate only where its exact scaled KKT
        residual -- the loop's own stopping test -- is ``<= skip_tol``, so the loop stops it as converged. Its
        state carries the polish's factorization (scaling ``D = 1_A / sqrt(eps)``), which is what the KKT
        backward needs at an exact active-set solution.
        """
        cand = (st.residual <= self._polish_below(x)) & (st.residual > self.skip_tol) & (st.status == 0)
        k = int(cand.sum())
        if k == 0:
            return z, st
        whole = 2 * k >= cand.shape[0]  # most of the batch: polish all of it (no gathers), keep the candidates
        if whole:
            xs, cs, sts, zs = x, c, st, z
        else:
            idx = torch.nonzero(cand).flatten()
            xs, cs, sts, zs = take_qp_data(x, idx), c.take(idx), tree_index(st, idx), z.index_select(0, idx)
        zp, sp, lp, nup, Gzp, factored, ok = self._polish(xs, cs, zs, sts.s, sts.lam, sts.nu, self.polish_rounds)
        pol = self._state(zp, xs, cs, sp.clamp_min(0), lp.clamp_min(0), nup, sts.status, sts, Gzp, factored)
        good = ok & (pol.status == 0) & (pol.residual <= self.skip_tol)
        if whole:
            good = good & cand
            return torch.where(good[:, None], zp, z), tree_where(good, pol, st)
        if not bool(good.any()):
            return z, st
        sub = torch.nonzero(good).flatten()
        keep = idx.index_select(0, sub)
        return z.index_copy(0, keep, zp.index_select(0, sub)), tree_index_copy(st, keep, tree_index(pol, sub))

    def stationarity(self, problem, y, x, state: QPState) -> Tensor:
        return state.residual

    def current_value(self, state: QPState) -> Tensor:
        return state.value


def _projected_farkas(x: QPData, y: Tensor, nu: Tensor, eps: float) -> Tensor:
    r"""``(B,)`` bool: the multipliers' direction ``(y, nu)`` (``y >= 0``), projected onto the null space of
    :math:`K = [G_S^\top\ A^\top]` (``S`` = support of ``y``) and clipped to ``y >= 0``, is a Farkas certificate
    of primal infeasibility: :math:`\|G^\top y + A^\top\nu\|_\infty \le 10\,\epsilon` and
    :math:`h^\top y + b^\top \nu < -\epsilon` after scaling to :math:`\max(\|y\|_\infty, \|\nu\|_\infty) = 1`.
    The projection is :math:`v - K^\top (K K^\top)^{-1} K v` with
    :math:`K K^\top = G^\top \mathrm{diag}(1_S) G + A^\top A` (a tiny shift keeps it invertible where the
    support is small)."""
    with torch.no_grad():
        tiny = qp_guards(y.dtype).tiny
        supp = (y > 1e-8 * y.amax(-1, keepdim=True).clamp_min(tiny)).to(y.dtype)
        n = x.n
        Kv = _mtv(x.G, y * supp) + (_mtv(x.A, nu) if x.p > 0 else 0.0)
        KK = _hessian(x.G.new_zeros(1, n, n).expand(y.shape[0], n, n), x.G, supp)
        if x.p > 0:
            KK = KK + (x.A.transpose(-1, -2) @ x.A)
        scale = KK.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1.0)
        KK = KK + (1e-12 * scale)[:, None, None] * torch.eye(n, dtype=y.dtype, device=y.device)
        L, info = torch.linalg.cholesky_ex(KK)
        w = _chol_solve(L, Kv[..., None])[..., 0]
        y2 = ((y - _mv(x.G, w)) * supp).clamp_min(0)
        nu2 = nu - _mv(x.A, w) if x.p > 0 else nu
        norm = torch.maximum(_inf(y2), _inf(nu2)).clamp_min(tiny)[:, None]
        y2, nu2 = y2 / norm, nu2 / norm
        far = _mtv(x.G, y2) + (_mtv(x.A, nu2) if x.p > 0 else 0.0)
        sep = (x.h * y2).sum(-1) + ((x.b * nu2).sum(-1) if x.p > 0 else 0.0)
        return (info == 0) & (_inf(far) <= eps * 10) & (sep < -eps)
