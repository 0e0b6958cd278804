"""``solve``: the single entry point for every problem kind and solver."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from ._iterate import replace_rows
from ._problem import Context, Problem, batch_size, count_evaluations
from ._solution import RESULTS, Solution, SolveError
from ._solver import Solver
from ._tree import tree_tensors
from .adjoint import AbstractAdjoint, Implicit

_DEFAULT_TOL = {torch.float64: 1e-8, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def default_tol(dtype: torch.dtype) -> float:
    """The default gradient-norm tolerance: 1e-8 for float64, 1e-5 for float32."""
    return _DEFAULT_TOL.get(dtype, 1e-5)


def solve(
    problem: Problem,
    solver: Solver,
    x: Context,
    y0: Tensor | None = None,
    *,
    adjoint: AbstractAdjoint | None = None,
    max_steps: int = 1000,
    tol: float | None = None,
    rtol: float = 0.0,
    throw: bool = True,
    trace: bool = False,
    progress: bool = False,
) -> Solution:
    r"""Solve the batch of problems :math:`\min_y f(y; x_i)`, :math:`i = 1..B`.

    Args:
        problem: a :class:`~doubleopt.Problem` (or family).
        solver: a solver configuration, e.g. ``do.LBFGS()``.
        x: the contexts, batch dimension first (a tensor or dataclass of tensors); may be ``None`` when
            the problem has no context (then ``y0`` fixes the batch size).
        y0: ``(B, n)`` starting points; default ``problem.init(x)``.
        adjoint: how to differentiate the solution: ``do.Implicit()`` (default), ``do.Unroll()``,
            ``do.Truncated(k)``.
        max_steps: step budget per instance (>= 1).
        tol: an instance succeeds when its stationarity measure (gradient norm, or gradient-mapping norm
            for composite problems) is ``<= tol``. Default :func:`default_tol` of the dtype.
        rtol: also succeed when the relative decrease of the objective in one step is ``<= rtol``
            (0 disables this test).
        throw: raise :class:`~doubleopt.SolveError` naming the failing instances if any instance did not
            succeed; ``throw=False`` returns per-instance codes in ``Solution.result`` instead (the mode for
            training over batches). There an instance that failed as ``nonfinite`` (NaN or inf in its input, or
            an iterate or objective that overflowed) is returned as a constant: under ``Unroll`` and
            ``Truncated`` it adds exactly zero, never NaN, to the gradients of shared parameters and of the
            other instances.
        trace: record the objective of every instance at every step in ``Solution.trace``.
        progress: show a progress bar.

    Returns:
        A :class:`~doubleopt.Solution`.

    Example:
        >>> import torch, doubleopt as do
        >>> family = do.problems.LogisticRegression(n_features=3, n_points=100)
        >>> x = family.sample(256, generator=torch.Generator().manual_seed(0))
        >>> sol = do.solve(family, do.LBFGS(), x, max_steps=200, tol=1e-6, throw=False)
        >>> sol.y.shape, sol.result.shape
        (torch.Size([256, 4]), torch.Size([256]))
        >>> bool((sol.result == do.RESULTS.successful).all())
        True
    """
    adjoint = Implicit() if adjoint is None else adjoint
    _check_options(problem, solver, adjoint, max_steps, tol, rtol)
    problem.check_context(x)
    y0 = _check_start(problem, x, y0, solver)
    tol = default_tol(y0.dtype) if tol is None else float(tol)
    B = y0.shape[0]

    bad_input = _nonfinite_instances(x, y0, B)
    if bool(bad_input.any()):
        if throw:
            idx = torch.nonzero(bad_input).flatten().tolist()
            raise ValueError(
                f"non-finite values (NaN or inf) in x or y0 for instances {idx[:10]}"
                f"{' ...' if len(idx) > 10 else ''}; pass throw=False to get RESULTS.nonfinite for them instead"
            )
        y0 = torch.where(bad_input[:, None], torch.zeros_like(y0), y0)

    result0 = torch.full((B,), int(RESULTS.nonfinite), dtype=torch.int64, device=y0.device)
    start = time.perf_counter()
    with count_evaluations() as counts:
        if B == 0:
            out = _empty_output(problem, solver, x, y0)
        else:
            out = adjoint.run(
                problem,
                solver,
                x,
                y0,
                max_steps=max_steps,
                tol=tol,
                rtol=rtol,
                trace=trace,
                progress=progress,
                done0=bad_input,
                result0=result0,
            )
        value = problem.objective(out.y, _safe_context(x, bad_input)) if B > 0 else y0.new_zeros(0)
    wall = time.perf_counter() - start
    failed = out.result == int(RESULTS.nonfinite)
    if value.requires_grad and bool(failed.any()):  # a failed instance adds nothing to any gradient
        value = torch.where(failed, value.detach(), value)
    if bool(bad_input.any()):
        value = torch.where(bad_input, torch.full_like(value, float("nan")), value)
    sol = Solution(
        y=out.y,
        value=value,
        result=out.result,
        num_steps=out.num_steps,
        stationarity=out.stationarity,
        stats={
            "f_evals": counts.f_evals,
            "grad_evals": counts.grad_evals,
            "hvp_evals": counts.hvp_evals,
            "wall_time": wall,
            "max_steps": max_steps,
            "tol": tol,
            "solver": type(solver).__name__,
            "adjoint": type(adjoint).__name__,
        },
        state=out.state,
        trace=out.trace,
        trace_times=out.trace_times,
    )
    if throw and not bool(sol.successful.all()):
        raise SolveError(sol)
    return sol


def _check_options(problem, solver, adjoint, max_steps, tol, rtol) -> None:
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a doubleopt.Problem, got {type(problem).__name__}")
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a doubleopt solver (e.g. do.LBFGS()), got {type(solver).__name__}")
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(f"adjoint must be do.Implicit(), do.Unroll() or do.Truncated(k), got {adjoint!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    for name, value in (("tol", tol), ("rtol", rtol)):
        if value is None and name == "tol":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | Tensor) or (
            isinstance(value, Tensor) and value.numel() != 1
        ):
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not (float(value) >= 0):
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    solver.check_problem(problem)


def _check_start(problem: Problem, x: Context, y0: Tensor | None, solver: Solver | None = None) -> Tensor:
    tensors = tree_tensors(x)
    float_ctx = [t for t in tensors if t.is_floating_point()]
    if y0 is None:
        if not tensors:
            raise ValueError("x holds no tensor, so y0 is required to fix the batch size and dimension")
        if solver is not None and not solver.uses_start and problem.dim and float_ctx:
            ref = float_ctx[0]
            y0 = ref.new_zeros(batch_size(x), problem.dim)  # a placeholder the solver does not read
        else:
            y0 = problem.init(x)
    if not isinstance(y0, Tensor):
        raise TypeError(f"y0 must be a tensor of shape (B, n), got {type(y0).__name__}")
    if y0.dim() != 2:
        raise ValueError(f"y0 must have shape (B, n) = (batch, {problem.dim or 'n'}), got {tuple(y0.shape)}")
    if not y0.is_floating_point():
        raise ValueError(f"y0 must be a floating-point tensor, got dtype {y0.dtype}")
    if problem.dim and y0.shape[1] != problem.dim:
        raise ValueError(f"y0 has {y0.shape[1]} columns but {type(problem).__name__} has dimension n = {problem.dim}")
    if tensors and any(t.dim() > 0 for t in tensors):
        B = batch_size(x)
        if y0.shape[0] != B:
            raise ValueError(f"y0 has batch size {y0.shape[0]} but x has batch size {B}")
    for t in float_ctx:
        if t.dtype != y0.dtype:
            raise ValueError(
                f"dtype mismatch: y0 is {y0.dtype} but a tensor of x is {t.dtype}; "
                "convert both to one dtype (e.g. family.sample(..., ).to(torch.float64))"
            )
    for t in tensors:
        if t.device != y0.device:
            raise ValueError(f"device mismatch: y0 is on {y0.device} but a tensor of x is on {t.device}")
    for p in problem.parameters():
        if p.is_floating_point() and p.dtype != y0.dtype:
            raise ValueError(
                f"dtype mismatch: y0 is {y0.dtype} but a parameter of {type(problem).__name__} "
                f"is {p.dtype}; call problem.to({y0.dtype})"
            )
    return y0


def _nonfinite_instances(x: Context, y0: Tensor, B: int) -> Tensor:
    bad = ~torch.isfinite(y0).all(dim=-1)
    for t in tree_tensors(x):
        if t.is_floating_point() and t.dim() > 0 and t.shape[0] == B:
            if t.dim() > 1 and B > 1 and t.stride(0) == 0:  # shared by the batch (expanded view): check it once
                bad = bad | ~torch.isfinite(t[0]).all()
                continue
            flat = t.detach().flatten(1) if t.dim() > 1 else t.detach()[:, None]
            # a row holding inf or NaN has a non-finite sum (one pass, several times faster than isfinite().all()
            # on large contexts); only rows whose sum is non-finite (or overflows) are checked entry by entry
            suspect = ~torch.isfinite(flat.sum(-1))
            if bool(suspect.any()):
                suspect = suspect & ~torch.isfinite(flat).all(dim=-1)
            bad = bad | suspect
    return bad


def _safe_context(x: Context, bad_input: Tensor) -> Context:
    """``x`` with the instances refused for non-finite input replaced by a good instance's (detached) context when
    autograd records, so that their NaN stays out of the backward pass of ``Solution.value`` (their value is
    reported as NaN anyway)."""
    if not torch.is_grad_enabled() or not bool(bad_input.any()) or bool(bad_input.all()):
        return x
    donor = int(torch.nonzero(~bad_input).flatten()[0])
    return replace_rows(x, bad_input, donor)


def _empty_output(problem, solver, x, y0) -> Any:
    from ._iterate import LoopOutput

    z = torch.zeros(0, dtype=torch.int64, device=y0.device)
    return LoopOutput(y=y0, state=None, result=z, num_steps=z, stationarity=y0.new_zeros(0), trace=None)
