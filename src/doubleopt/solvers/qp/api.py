"""``qp_solve``: the QP entry point (defaults per dtype, the native kernel's step count in the statistics)."""

from __future__ import annotations

from dataclasses import fields, replace

import torch
from torch import Tensor

from ..._solution import Solution, SolveError
from ..._solve import solve
from .. import _native
from .interior_point import QP, QPState
from .problem import QPData, QPProblem, QPStart, make_qp_data, take_qp_data
from .weakly_active import WEAKLY_ACTIVE_NOTE
from .weakly_active import weakly_active as instances_weakly_active

QP_DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
_WEAKLY_ACTIVE_MODES = ("tighten", "mark", "off")
_BOOKKEEPING = ("consts", "rows", "start", "native_steps")  # QPState fields a merge keeps from the whole batch


_TIGHTEST = 1e-14  # about 50 eps: the scaled KKT residual the float64 interior point (or its polish) still reaches


def _tight_tols(tol: float) -> list[float]:
    """The tolerances an instance with a weakly active constraint is re-solved to, in turn while it stays
    ambiguous: 100x tighter than ``tol`` (at most 1e-12), then 10^4x tighter (at most 1e-14), never below 1e-14."""
    out: list[float] = []
    for t in (min(tol * 1e-2, 1e-12), min(tol * 1e-4, _TIGHTEST)):
        t = max(t, _TIGHTEST)
        if t < tol and t not in out:
            out.append(t)
    return out


def _merge(sol: Solution, idx: Tensor, sub: Solution, ok: Tensor) -> Solution:
    """``sol`` with instances ``idx[ok]`` replaced by ``sub``'s rows ``ok`` (``y``, ``value``, ``stationarity`` and the
    state's point and factorization; differentiably); every instance of ``idx`` adds its extra steps."""
    keep, rows = idx[ok], torch.nonzero(ok).flatten()
    st, sst = sol.state, sub.state
    changes = {}
    for f in fields(QPState):
        a, b = getattr(st, f.name), getattr(sst, f.name)
        if f.name not in _BOOKKEEPING and a.dim() > 0 and a.shape[1:] == b.shape[1:]:
            changes[f.name] = a.index_copy(0, keep, b.index_select(0, rows).to(a.dtype))
    return replace(
        sol,
        y=sol.y.index_copy(0, keep, sub.y.index_select(0, rows)),
        value=sol.value.index_copy(0, keep, sub.value.index_select(0, rows)),
        stationarity=sol.stationarity.index_copy(0, keep, sub.stationarity.index_select(0, rows)),
        num_steps=sol.num_steps.index_copy(0, idx, sol.num_steps.index_select(0, idx) + sub.num_steps),
        state=replace(st, **changes),
    )


def _resolve_weakly_active(sol: Solution, data: QPData, problem: QPProblem, solver: QP, mode: str, *, adjoint,
                           max_steps: int, tol: float) -> Solution:
    """Find the successful instances with a weakly active constraint (:mod:`.weakly_active`); with ``"tighten"``
    re-solve them (only them) to :func:`_tight_tols` in turn while they stay ambiguous, keeping each result that
    succeeds; report, per instance,
    ``stats["weakly_active"]`` (still ambiguous: the gradient is one of several one-sided derivatives) and
    ``stats["tightened"]`` (re-solved)."""
    st = sol.state
    if not isinstance(st, QPState) or data.m == 0 or sol.y.shape[0] == 0:
        return sol
    flag = sol.successful & instances_weakly_active(st.s, st.lam, data.h)
    tightened = torch.zeros_like(flag)
    if mode == "tighten":
        for tight in _tight_tols(tol):
            if not bool(flag.any()):
                break
            idx = torch.nonzero(flag).flatten()
            xs = take_qp_data(data, idx)
            sub = solve(problem, replace(solver, skip_tol=tight, own_start=True), xs, xs.q.new_zeros(xs.q.shape),
                        adjoint=adjoint, max_steps=max_steps, tol=tight, throw=False)
            sub = _report_native(sub)
            ok = sub.successful
            if bool(ok.any()):
                sol = _merge(sol, idx, sub, ok)
            else:
                sol = replace(sol, num_steps=sol.num_steps.index_copy(0, idx, sol.num_steps[idx] + sub.num_steps))
            still = ~ok | instances_weakly_active(sub.state.s, sub.state.lam, xs.h)
            flag = flag.index_copy(0, idx, still)
            tightened = tightened.index_copy(0, idx, torch.ones_like(still))
    stats = {**sol.stats, "weakly_active": flag, "tightened": tightened}
    if bool(flag.any()):
        stats["weakly_active_note"] = WEAKLY_ACTIVE_NOTE
    return replace(sol, stats=stats)


def _report_native(sol: Solution) -> Solution:
    """``num_steps`` = the native kernel's iterations (``state.native_steps``, where it ran) + the loop's steps;
    ``stats["native"]`` and ``stats["native_steps"]`` (per instance) say that it ran."""
    st = sol.state
    if not isinstance(st, QPState) or st.native_steps is None:
        return sol
    steps = st.native_steps.to(sol.num_steps.device)
    return replace(sol, num_steps=sol.num_steps + steps, stats={**sol.stats, "native": True, "native_steps": steps})


def qp_solve(
    Q: Tensor,
    q: Tensor,
    A: Tensor | None = None,
    b: Tensor | None = None,
    G: Tensor | None = None,
    h: Tensor | None = None,
    *,
    start: QPStart | None = None,
    solver: QP | None = None,
    adjoint=None,
    regularization: float = 0.0,
    max_steps: int = 50,
    tol: float | None = None,
    throw: bool = True,
    trace: bool = False,
    compute_dtype: torch.dtype | None = None,
    weakly_active: str = "tighten",
):
    r"""Solve a batch of convex QPs :math:`\min \tfrac12 z^\top Q z + q^\top z`, :math:`Az = b,\ Gz \le h`.

    Each matrix is shared by the batch (``Q (n, n)``, ``q (n,)``, ``A (p, n)``, ``b (p,)``, ``G (m, n)``,
    ``h (m,)``) or given per instance with a leading ``B``; omit ``A, b`` (or ``G, h``) for no equality
    (inequality) constraints. Runs :class:`QP` through :func:`doubleopt.solve`, so the result is a
    :class:`~doubleopt.Solution`: ``y`` the primal solutions ``(B, n)``, ``result`` per-instance codes
    (``successful``, ``infeasible``, ``unbounded``, ``max_steps_reached``, ...), ``state`` a
    :class:`QPState` with the multipliers ``lam`` / ``nu`` and slacks ``s``.

    Args:
        start: a warm start (:class:`~doubleopt.problems.QPStart`), e.g. from a previous solution's state.
        solver: a configured :class:`QP` (default ``QP()``).
        adjoint (AbstractAdjoint | None): ``do.Implicit()`` (default: the OptNet KKT backward, reusing the
            forward factorization) or ``do.Unroll()`` (backpropagate through the iterations).
        regularization: solve with ``Q + regularization * I`` (an explicit change of problem; use it for a
            ``Q`` that is not positive semidefinite, which otherwise raises ``ValueError``).
        max_steps: as in :func:`doubleopt.solve`.
        throw: as in :func:`doubleopt.solve`.
        trace: as in :func:`doubleopt.solve`.
        tol: bound on the scaled KKT residual (default 1e-10 when computing in float64, 1e-4 in float32).
            It bounds the complementarity s'lam / m too, so on degenerate instances (a constraint with both
            s and lam near 0) the solution error is about sqrt(tol): use 1e-12 for 1e-6-accurate solutions.
        compute_dtype: the dtype the interior point runs in. Default: float64 for float64 *and* for
            lower-precision inputs (float32, ...), whose solution and gradients are cast back to the input
            dtype (``Solution.state`` stays in float64). Pass ``torch.float32`` to iterate natively in
            float32: the interior point then stalls near a KKT residual of 1e-4..1e-5 once ``lam / s`` is
            ill-conditioned, and the solution is only good to about 1e-3..1e-2 (README, "OptNet", float32).
        weakly_active: what to do with a successful instance that has a *weakly active* constraint, one whose
            slack and multiplier are both small and not separated (:mod:`doubleopt.solvers.qp.weakly_active`): its
            active set, and so its gradient, is ambiguous at ``tol`` (the gradient can be off by 20% or more).
            ``"tighten"`` (default): re-solve those instances, and only those, to ``min(tol / 100, 1e-12)``
            and, where still ambiguous, to 1e-14 (computing in float64; in float32 they are only marked), which
            resolves a small but nonzero multiplier: the solution and gradient then agree with a high-accuracy
            solve. ``"mark"``: only report.
            ``"off"``: neither. Reported per instance in ``Solution.stats``: ``"tightened"`` (re-solved) and
            ``"weakly_active"`` (still ambiguous: a degenerate constraint, active with a zero multiplier, where
            the solution is not differentiable and the gradient is one of several one-sided derivatives;
            ``stats["weakly_active_note"]`` says so).

    Example:
        >>> import torch, doubleopt as do
        >>> f64 = torch.float64
        >>> Q = torch.eye(3, dtype=f64); q = torch.tensor([[1., -2, 0.5]], dtype=f64)
        >>> sol = do.qp_solve(Q, q, A=torch.ones(1, 3, dtype=f64), b=torch.ones(1, dtype=f64),
        ...                   G=-torch.eye(3, dtype=f64), h=torch.zeros(3, dtype=f64))
        >>> sol.y.round(decimals=6) + 0.0  # (+ 0.0 turns a rounded -0. into 0.)
        tensor([[0., 1., 0.]], dtype=torch.float64)
    """
    if weakly_active not in _WEAKLY_ACTIVE_MODES:
        raise ValueError(f"weakly_active must be one of {_WEAKLY_ACTIVE_MODES}, got {weakly_active!r}")
    if not regularization >= 0 or regularization == float("inf"):
        raise ValueError(f"regularization must be a finite number >= 0, got {regularization}")
    if regularization > 0:
        Q = Q + regularization * torch.eye(Q.shape[-1], dtype=Q.dtype, device=Q.device)
    data = make_qp_data(Q, q, A, b, G, h, start=start)  # validates shapes and dtypes
    in_dtype = data.q.dtype
    cdt = compute_dtype if compute_dtype is not None else torch.promote_types(in_dtype, torch.float64)
    if cdt != in_dtype:  # convert the raw (possibly shared) inputs, so shared matrices stay views
        def cast(t):
            return None if t is None else t.to(cdt)

        if start is not None:
            start = QPStart(*(cast(t) for t in (start.z, start.s, start.lam, start.nu)))
        data = make_qp_data(*(cast(t) for t in (Q, q, A, b, G, h)), start=start)
    if tol is None:
        tol = QP_DEFAULT_TOL.get(cdt, 1e-4)
    problem = QPProblem()
    solver = solver or QP()
    if solver.skip_tol is None:
        solver = replace(solver, skip_tol=tol)
    if solver.native is None:
        solver = replace(solver, native=_native.available() and not trace)  # a trace records the PyTorch steps
    if solver.native_budget is None:  # the kernel's iterations and the loop's steps share max_steps
        solver = replace(solver, native_budget=max_steps - 1)
    if start is not None:
        y0 = data.start.z
    else:  # QP.init picks the start: the native kernel's own, or the PyTorch cold start where it does not apply
        y0 = data.q.new_zeros(data.q.shape)
        solver = replace(solver, own_start=True)
    try:
        sol = solve(problem, solver, data, y0, adjoint=adjoint, max_steps=max_steps, tol=tol, throw=throw,
                    trace=trace)
    except SolveError as err:
        raise SolveError(_report_native(err.solution)) from None
    sol = _report_native(sol)
    if weakly_active != "off":
        mode = weakly_active if cdt == torch.float64 else "mark"
        sol = _resolve_weakly_active(sol, data, problem, solver, mode, adjoint=adjoint, max_steps=max_steps, tol=tol)
    if cdt != in_dtype:
        sol = replace(sol, y=sol.y.to(in_dtype), value=sol.value.to(in_dtype))
    return sol
