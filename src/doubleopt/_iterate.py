"""The one loop. Every solver under every adjoint runs through :func:`iterate`.

It owns ``max_steps``, the stopping tolerances, per-instance termination (a finished instance stops
changing while the others continue), non-finite detection, per-instance result codes and the trace.
Solvers only implement ``init / step / stationarity / postprocess``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._solution import RESULTS
from ._tree import tree_index, tree_index_copy, tree_map, tree_where

if TYPE_CHECKING:
    from ._problem import Context, Problem
    from .solvers._base import Solver


@dataclass
class LoopOutput:
    y: Tensor
    state: Any
    result: Tensor
    num_steps: Tensor
    stationarity: Tensor
    trace: Tensor | None
    trace_times: Tensor | None = None


def _finite_rows(y: Tensor, value: Tensor) -> Tensor:
    """``(B,)``: row ``b`` of ``y`` and ``value[b]`` are finite. ``(y * 0).sum(-1)`` is 0 for a finite row and
    NaN as soon as one entry is inf or NaN: one fused pass, several times faster than ``isfinite(y).all(-1)``
    (which runs every step of every solve)."""
    return ((y.detach() * 0).sum(-1) == 0) & torch.isfinite(value)


def replace_rows(tree: Any, mask: Tensor, donor: int) -> Any:
    """``tree`` with the instances in ``mask`` replaced by a constant copy of instance ``donor`` (every leaf with
    leading dimension ``B``; leaves shared by the batch, such as expanded views, are kept).

    The loop computes every instance in one batched pass, including the instances it has given up on. When
    autograd records, a failed instance's numbers (NaN context, an iterate where the objective overflows) would
    still enter the backward pass: its gradient there is 0, but ``0 * inf = NaN`` reaches the shared parameters
    and, through them, every instance. Computing the failed instances on a finite donor's detached inputs
    instead keeps their rows of the graph finite, so they contribute exactly 0 (the "double where")."""
    B = mask.shape[0]

    def pick(t: Tensor) -> Tensor:
        if t.dim() == 0 or t.shape[0] != B or (B > 1 and t.stride(0) == 0):
            return t
        m = mask.reshape((B,) + (1,) * (t.dim() - 1))
        return torch.where(m, t[donor : donor + 1].detach(), t)

    return tree_map(pick, tree)


def _failed_rows_guard(result: Tensor, done: Tensor, ok: Tensor) -> tuple[Tensor, int] | None:
    """``(failed, donor)`` when autograd records and some finished instance failed as non-finite (its inputs are
    then replaced by instance ``donor``'s, see :func:`replace_rows`); ``None`` otherwise (the usual case)."""
    if not torch.is_grad_enabled():
        return None
    failed = done & (result == int(RESULTS.nonfinite))
    if not bool(failed.any()):
        return None
    candidates = torch.nonzero(ok & ~failed).flatten()
    if candidates.numel() == 0:
        return None
    return failed, int(candidates[0])


def _describe(t: Any) -> str:
    if isinstance(t, Tensor):
        return f"a tensor of shape {tuple(t.shape)} and dtype {t.dtype}"
    return f"a {type(t).__name__}"


def check_problem_outputs(problem: Problem, y: Tensor, x: Context, cause: BaseException | None = None) -> None:
    """Evaluate ``problem`` once at ``y`` and raise a ``ValueError`` saying what was expected if its objective (or
    smooth part) or an overridden ``smooth_value_and_grad`` returns the wrong type, shape, dtype or device.

    Called by the loop only when the first evaluation failed or its results look wrong (so a correct problem
    costs nothing); ``cause`` is chained to the error. A problem whose own code raises is left to that error."""
    from ._problem import Problem as _Problem

    name = type(problem).__name__
    B, n = y.shape
    expect = f"expected one value per instance: a tensor of shape (B,) = ({B},) and dtype {y.dtype} (y's)"
    methods = ["smooth", "nonsmooth"] if problem.is_composite else ["objective"]
    for method in methods:
        try:
            with torch.no_grad():
                f = getattr(problem, method)(y.detach(), x)
        except Exception:
            return
        if not isinstance(f, Tensor) or f.shape != (B,) or f.dtype != y.dtype or f.device != y.device:
            hint = " (reduce over the last dimension, e.g. .sum(-1))" if isinstance(f, Tensor) and f.dim() > 1 else ""
            got = _describe(f) + (f" on {f.device}" if isinstance(f, Tensor) and f.device != y.device else "")
            raise ValueError(
                f"{name}.{method}(y, x) returned {got} for y of shape {tuple(y.shape)}; {expect}{hint}"
            ) from cause
    if type(problem).smooth_value_and_grad is not _Problem.smooth_value_and_grad:
        try:
            with torch.no_grad():
                out = problem.smooth_value_and_grad(y.detach(), x)
        except Exception:
            return
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(
                f"{name}.smooth_value_and_grad(y, x) returned {_describe(out)}; expected a pair (value, grad)"
            ) from cause
        f, g = out
        if not isinstance(f, Tensor) or f.shape != (B,) or f.dtype != y.dtype:
            raise ValueError(f"{name}.smooth_value_and_grad(y, x) returned a value that is {_describe(f)}; {expect}") \
                from cause
        if not isinstance(g, Tensor) or g.shape != y.shape or g.dtype != y.dtype:
            raise ValueError(
                f"{name}.smooth_value_and_grad(y, x) returned a gradient that is {_describe(g)}; expected the shape "
                f"and dtype of y: ({B}, {n}), {y.dtype}"
            ) from cause


def _check_first_state(problem: Problem, solver: Solver, y: Tensor, x: Context, state: Any) -> None:
    """Cheap checks of the solver's first state (metadata only); if something looks wrong, let
    :func:`check_problem_outputs` find out whether the user's problem is the cause."""
    value = solver.current_value(state)
    grad = getattr(state, "grad", None)
    odd = not isinstance(value, Tensor) or value.shape != (y.shape[0],) or value.dtype != y.dtype
    odd = odd or (isinstance(grad, Tensor) and (grad.shape != y.shape or grad.dtype != y.dtype))
    if odd:
        check_problem_outputs(problem, y, x)


def iterate(
    problem: Problem,
    solver: Solver,
    x: Context,
    y0: Tensor,
    *,
    max_steps: int,
    tol: float,
    rtol: float,
    trace: bool,
    progress: bool,
    done0: Tensor | None = None,
    result0: Tensor | None = None,
    state0: Any = None,
    postprocess: bool = True,
) -> LoopOutput:
    """Run ``solver`` on ``problem`` from ``y0`` until every instance has stopped.

    An instance stops when its stationarity measure is ``<= tol``, when its relative objective progress
    is ``<= rtol`` (if ``rtol > 0``), when its iterate or objective becomes non-finite (the last finite
    iterate is kept) or when the solver reports a failure code for it in ``state.status``.
    ``done0`` / ``result0`` mark instances that are already finished (e.g. bad input with ``throw=False``).

    Loop compaction: a solver whose class sets ``loop_compact_below = r > 0`` declares that its state (and
    the context) are batch-first and that an instance's step depends on that instance only. Then, outside
    autograd and without a trace, once fewer than ``r * B`` instances are unfinished the loop gathers them
    and continues on that sub-batch (recursively, so the batch keeps shrinking): a batched solve costs about
    the sum of its instances' own steps instead of ``B`` times the slowest one's, with the same iterates.
    """
    B = y0.shape[0]
    device = y0.device
    y = y0
    result = torch.full((B,), int(RESULTS.max_steps_reached), dtype=torch.int64, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    if done0 is not None:
        done = done | done0
        result = torch.where(done0, result0, result)
    guard = _failed_rows_guard(result, done, torch.ones_like(done))
    if guard is not None:  # instances refused at the start (non-finite x or y0) run on a donor's inputs
        x = replace_rows(x, *guard)
        y = replace_rows(y, guard[0] & ~torch.isfinite(y).all(-1), guard[1])
        if state0 is not None:
            state0 = replace_rows(state0, *guard)
    if state0 is None:
        try:
            state = solver.init(problem, y, x)
        except Exception as e:  # the first call of a user's Problem: say what it got wrong, if that is the cause
            check_problem_outputs(problem, y, x, cause=e)
            raise
        _check_first_state(problem, solver, y, x, state)
        y = solver.initial_iterate(problem, y, x, state)
    else:
        state = state0

    value = solver.current_value(state)
    finite = _finite_rows(y, value)
    bad = ~done & ~finite
    result = torch.where(bad, int(RESULTS.nonfinite), result)
    done = done | bad
    stat = solver.stationarity(problem, y, x, state)
    conv = ~done & (stat <= tol)
    result = torch.where(conv, int(RESULTS.successful), result)
    done = done | conv

    num_steps = torch.zeros(B, dtype=torch.int64, device=device)
    values = [value.detach().clone()] if trace else None
    start = time.perf_counter()
    times = [0.0] if trace else None
    compact_below = float(getattr(solver, "loop_compact_below", 0.0))
    can_compact = compact_below > 0 and values is None and not torch.is_grad_enabled()
    bar = None
    if progress:
        from ._progress import progress_bar

        bar = progress_bar(max_steps, f"solve[{type(solver).__name__}]", leave=False)
    try:
        n_done = int(done.sum())
        for step_index in range(max_steps):
            if n_done == B:
                break
            guard = _failed_rows_guard(result, done, torch.ones_like(done)) if n_done else None
            if guard is None:
                y_new, state_new = solver.step(problem, y, x, state)
            else:
                y_new, state_new = solver.step(
                    problem, replace_rows(y, *guard), replace_rows(x, *guard), replace_rows(state, *guard)
                )
            value_new = solver.current_value(state_new)
            finite = _finite_rows(y_new, value_new)
            if torch.is_grad_enabled() and not bool(finite.all()):
                # an instance went non-finite in this step: redo the step with it on a finite donor's inputs, so
                # that its inf stays out of the graph (the decisions below still use this step's numbers)
                retry = _failed_rows_guard(torch.where(~finite, int(RESULTS.nonfinite), result), done | ~finite, finite)
                if retry is not None:
                    y_new, state_new = solver.step(
                        problem, replace_rows(y, *retry), replace_rows(x, *retry), replace_rows(state, *retry)
                    )
            status = getattr(state_new, "status", None)
            clean = finite if status is None else finite & (status == int(RESULTS.successful))
            if n_done == 0 and bool(clean.all()):
                # fast path (the usual case): every instance is active, finite and reports no failure, so
                # no masking is needed; same values as the general path below
                y, state = y_new, state_new
                num_steps = num_steps + 1
                stat = solver.stationarity(problem, y, x, state)
                conv = stat <= tol
                if rtol > 0:
                    scale = torch.maximum(value.abs(), value_new.abs()).clamp_min(1e-30)
                    conv = conv | ((value - value_new).abs() <= rtol * scale)
                result = torch.where(conv, int(RESULTS.successful), result)
                done = conv
                value = value_new
            else:
                active = ~done
                accept = active & finite
                if bool(accept.all()):
                    y, state = y_new, state_new
                else:
                    y = torch.where(accept[:, None], y_new, y)
                    state = tree_where(accept, state_new, state)
                num_steps = num_steps + active.to(torch.int64)

                newly_bad = active & ~finite
                result = torch.where(newly_bad, int(RESULTS.nonfinite), result)
                stop = newly_bad
                if status is not None:
                    failed = accept & (status != int(RESULTS.successful))
                    result = torch.where(failed, status, result)
                    stop = stop | failed
                stat_new = solver.stationarity(problem, y, x, state)
                stat = torch.where(accept, stat_new, stat)
                conv = accept & ~stop & (stat <= tol)
                if rtol > 0:
                    scale = torch.maximum(value.abs(), value_new.abs()).clamp_min(1e-30)
                    conv = conv | (accept & ~stop & ((value - value_new).abs() <= rtol * scale))
                result = torch.where(conv, int(RESULTS.successful), result)
                done = done | stop | conv
                value = torch.where(accept, value_new, value)
            n_done = int(done.sum())
            if values is not None:
                values.append(value.detach().clone())
                times.append(time.perf_counter() - start)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(active=B - n_done, refresh=False)
            if can_compact and 0 < B - n_done < compact_below * B:
                idx = torch.nonzero(~done).flatten()
                sub = iterate(
                    problem,
                    solver,
                    solver.take_context(x, idx),
                    y[idx],
                    max_steps=max_steps - step_index - 1,
                    tol=tol,
                    rtol=rtol,
                    trace=False,
                    progress=False,
                    state0=tree_index(state, idx),
                    postprocess=False,
                )
                y = y.index_copy(0, idx, sub.y)
                state = tree_index_copy(state, idx, sub.state)
                result = result.index_copy(0, idx, sub.result)
                num_steps = num_steps.index_copy(0, idx, num_steps[idx] + sub.num_steps)
                stat = stat.index_copy(0, idx, sub.stationarity.to(stat.dtype))
                break
    finally:
        if bar is not None:
            bar.close()

    if postprocess:
        y, result = solver.postprocess(problem, y, x, state, result)
    if torch.is_grad_enabled() and y.requires_grad:
        # an instance that failed as non-finite is returned as a constant: it adds nothing to any gradient
        failed = result == int(RESULTS.nonfinite)
        if bool(failed.any()):
            y = torch.where(failed[:, None], y.detach(), y)
    return LoopOutput(
        y=y,
        state=state,
        result=result,
        num_steps=num_steps,
        stationarity=stat.detach(),
        trace=torch.stack(values) if values is not None else None,
        trace_times=torch.tensor(times, dtype=torch.float64) if times is not None else None,
    )
