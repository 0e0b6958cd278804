"""``qp_solve``: the QP entry point (defaults per dtype, the native kernel's step count in the statistics)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..._solution import Solution, SolveError
from ..._solve import solve
from .. import _native
from .interior_point import QP, QPState
from .problem import QPProblem, QPStart, make_qp_data

QP_DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


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

    Example:
        >>> import torch, doubleopt as do
        >>> f64 = torch.float64
        >>> Q = torch.eye(3, dtype=f64); q = torch.tensor([[1., -2, 0.5]], dtype=f64)
        >>> sol = do.qp_solve(Q, q, A=torch.ones(1, 3, dtype=f64), b=torch.ones(1, dtype=f64),
        ...                   G=-torch.eye(3, dtype=f64), h=torch.zeros(3, dtype=f64))
        >>> sol.y.round(decimals=6) + 0.0  # (+ 0.0 turns a rounded -0. into 0.)
        tensor([[0., 1., 0.]], dtype=torch.float64)
    """
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
    if cdt != in_dtype:
        sol = replace(sol, y=sol.y.to(in_dtype), value=sol.value.to(in_dtype))
    return sol
