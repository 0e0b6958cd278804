r"""Batched backtracking line search (each instance has its own step).

:func:`armijo_backtracking` finds, per instance, the largest :math:`t = t_0 \rho^j` with
:math:`f(y + t d) \le f(y) + c_1 t \nabla f(y)^\top d`. Accepted instances stop shrinking while the
others continue; an instance that finds no decrease in ``max_iter`` trials keeps its iterate and gets
``RESULTS.line_search_failed``. Trials evaluate value and gradient together, so the accepted trial's
gradient is reused by the solver (no extra evaluation when the first trial is accepted, the usual case
for L-BFGS and Newton).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._solution import RESULTS
from .._tree import tree_map


def _subset_evaluator(problem, x, B: int):
    """``f(idx, y_sub) -> (value, grad)`` evaluating only instances ``idx`` (the line search retries only the
    instances whose first trial failed, usually a few), or ``None`` where the problem holds batched state of
    its own (a parameter or buffer with leading dimension ``B``), so its instances cannot be selected."""
    for t in list(problem.parameters()) + list(problem.buffers()):
        if t.dim() > 0 and t.shape[0] == B:
            return None

    def evaluate(idx: Tensor, y_sub: Tensor):
        x_sub = tree_map(lambda t: t[idx] if t.dim() > 0 and t.shape[0] == B else t, x)
        return problem.value_and_grad(y_sub, x_sub)

    return evaluate


def _sufficient_decrease(value, slope0, t, f_t, slope_t, c1, eps):
    """Armijo, or its derivative form where f is flat to rounding (Hager & Zhang 2005's approximate
    Wolfe): :math:`f(t) \\le f(0) + 4\\epsilon|f(0)|` and :math:`\\phi'(t) \\le (2 c_1 - 1)\\phi'(0)`.
    The second form lets line searches reach gradient norms below :math:`\\sqrt{\\epsilon}`."""
    # comparisons with NaN are False, so a NaN value or slope is never accepted; -inf is (the loop then
    # reports the instance as nonfinite)
    armijo = f_t <= value + c1 * t * slope0
    approx = (f_t <= value + 4 * eps * value.abs()) & (slope_t <= (2 * c1 - 1) * slope0)
    return armijo | approx


@dataclass
class LineSearchResult:
    """What :func:`armijo_backtracking` returns, per instance of the batch.

    Attributes:
        y: ``(B, n)`` the accepted iterates (the starting ones where the search failed).
        value: ``(B,)`` objective at ``y``.
        grad: ``(B, n)`` gradient at ``y``.
        step: ``(B,)`` the accepted step length (0 where the search failed).
        status: ``(B,)`` ``RESULTS.successful`` or ``RESULTS.line_search_failed``.
    """

    y: Tensor
    value: Tensor
    grad: Tensor
    step: Tensor  # (B,) accepted step (0 where it failed)
    status: Tensor  # (B,) RESULTS code


def armijo_backtracking(
    problem,
    x,
    y: Tensor,
    value: Tensor,
    grad: Tensor,
    direction: Tensor,
    step0: Tensor | float,
    *,
    c1: float = 1e-4,
    shrink: float = 0.5,
    max_iter: int = 40,
    slope: Tensor | None = None,
) -> LineSearchResult:
    """See the module docstring. ``slope`` (optional) is :math:`\\nabla f(y)^\\top d` if already known.
    ``step0`` may be a number, the same first trial for every instance (``1.0``: the unit step of L-BFGS and
    Newton, whose first trial then costs one addition, one evaluation and one fused test)."""
    if slope is None:
        slope = (grad * direction).sum(-1)
    if not isinstance(step0, Tensor):
        t0 = float(step0)
        y_try = y + direction if t0 == 1.0 else torch.add(y, direction, alpha=t0)
        v_try, g_try = problem.value_and_grad(y_try, x)
        if bool((v_try <= torch.add(value, slope, alpha=c1 * t0)).all()):
            t = torch.full_like(value, t0)
            return LineSearchResult(y_try, v_try, g_try, t, torch.zeros_like(value, dtype=torch.int64))
        step0 = torch.full_like(value, t0)
        return _backtrack(
            problem, x, y, value, grad, direction, step0, c1, shrink, max_iter, slope, (y_try, v_try, g_try)
        )
    return _backtrack(problem, x, y, value, grad, direction, step0, c1, shrink, max_iter, slope, None)


def _backtrack(problem, x, y, value, grad, direction, step0, c1, shrink, max_iter, slope, first_trial):
    """:func:`armijo_backtracking` with a tensor ``step0``; ``first_trial`` is ``(y, f, grad)`` at ``step0`` if
    already evaluated (whose plain Armijo test failed somewhere)."""
    t = step0
    accepted = torch.zeros_like(value, dtype=torch.bool)
    # no descent possible: the direction is zero (converged) -> accept t with no move
    y_acc, v_acc, g_acc, t_acc = y, value, grad, torch.zeros_like(t)
    tiny = torch.finfo(y.dtype).eps
    first = True
    B = y.shape[0]
    subset = None
    for _ in range(max_iter):
        if not (first and first_trial is not None):
            y_try = torch.addcmul(y, t[:, None], direction)
        if not first and subset is not None:  # retry only the instances still searching
            idx = torch.nonzero(~accepted).flatten()
            try:
                v_sub, g_sub = subset(idx, y_try[idx])
                if v_sub.shape != idx.shape or g_sub.shape != (idx.shape[0], y.shape[1]):
                    raise ValueError("the problem does not evaluate a sub-batch instance by instance")
            except (RuntimeError, ValueError):
                # e.g. batched tensors held as plain attributes of a custom problem: use the full batch
                subset = None
        if first and first_trial is not None:
            y_try, v_try, g_try = first_trial
        elif first or subset is None:
            v_try, g_try = problem.value_and_grad(y_try, x)
        else:  # the instances already accepted keep their accepted trial
            v_try, g_try = value.index_copy(0, idx, v_sub), grad.index_copy(0, idx, g_sub)
        if first and first_trial is None and bool((v_try <= value + c1 * t * slope).all()):
            # fast path: Armijo holds for the first trial everywhere (usual for L-BFGS and Newton)
            return LineSearchResult(y_try, v_try, g_try, t, torch.zeros_like(value, dtype=torch.int64))
        ok = _sufficient_decrease(value, slope, t, v_try, (g_try * direction).sum(-1), c1, tiny)
        if first:
            subset = _subset_evaluator(problem, x, B)
        if first and bool(ok.all()):  # the first trial is accepted everywhere (some by the approximate form)
            return LineSearchResult(y_try, v_try, g_try, t, torch.zeros_like(ok, dtype=torch.int64))
        first = False
        new = ok & ~accepted
        y_acc = torch.where(new[:, None], y_try, y_acc)
        v_acc = torch.where(new, v_try, v_acc)
        g_acc = torch.where(new[:, None], g_try, g_acc)
        t_acc = torch.where(new, t, t_acc)
        accepted = accepted | ok
        if bool(accepted.all()):
            break
        t = torch.where(accepted, t, t * shrink)
    status = torch.where(accepted, int(RESULTS.successful), int(RESULTS.line_search_failed))
    return LineSearchResult(y_acc, v_acc, g_acc, t_acc, status.to(torch.int64))


def _evaluate_finite_graph(problem, x, y: Tensor, y_try: Tensor) -> tuple[Tensor, Tensor]:
    """``problem.value_and_grad(y_try, x)``; where a row's value or gradient is not finite while autograd records,
    that row's graph is rebuilt at the finite start point ``y`` and its non-finite numbers are returned as
    constants. The search decides exactly as before, but a rejected trial that overflowed adds no ``0 * inf`` to
    the backward pass of an unrolled solve (the row's gradient through the trial is then 0, not NaN)."""
    f_t, g_t = problem.value_and_grad(y_try, x)
    if not (torch.is_grad_enabled() and (f_t.requires_grad or g_t.requires_grad)):
        return f_t, g_t
    bad = ~(torch.isfinite(f_t) & torch.isfinite(g_t).all(-1))
    if not bool(bad.any()):
        return f_t, g_t
    f_s, g_s = problem.value_and_grad(torch.where(bad[:, None], y.detach(), y_try), x)
    return torch.where(bad, f_t.detach(), f_s), torch.where(bad[:, None], g_t.detach(), g_s)


def wolfe_line_search(
    problem,
    x,
    y: Tensor,
    value: Tensor,
    grad: Tensor,
    direction: Tensor,
    step0: Tensor,
    *,
    c1: float = 1e-4,
    c2: float = 0.1,
    max_iter: int = 30,
) -> LineSearchResult:
    r"""Batched strong-Wolfe line search (bracketing then zoom, Nocedal & Wright Alg. 3.5/3.6).

    Finds per instance a step with :math:`\phi(t) \le \phi(0) + c_1 t \phi'(0)` and
    :math:`|\phi'(t)| \le c_2 |\phi'(0)|`, :math:`\phi(t) = f(y + t d)`. While no upper bracket exists the
    trial step doubles; inside a bracket the next trial minimizes the quadratic interpolant through
    :math:`(t_{lo}, \phi_{lo}, \phi'_{lo})` and :math:`(t_{hi}, \phi_{hi})`, safeguarded to the middle 80%
    of the bracket. If ``max_iter`` trials end without both conditions, the best trial that satisfies the
    sufficient-decrease condition is accepted; an instance with none fails (``line_search_failed``).
    """
    slope0 = (grad * direction).sum(-1)
    inf = torch.full_like(value, float("inf"))
    lo, f_lo, d_lo = torch.zeros_like(value), value, slope0
    hi, f_hi, d_hi = inf.clone(), inf.clone(), torch.full_like(value, float("nan"))
    t = step0
    done = torch.zeros_like(value, dtype=torch.bool)
    y_acc, v_acc, g_acc, t_acc = y, value, grad, torch.zeros_like(t)
    have_armijo = torch.zeros_like(done)
    eps = torch.finfo(y.dtype).eps
    for _ in range(max_iter):
        y_try = y + t[:, None] * direction
        f_t, g_t = _evaluate_finite_graph(problem, x, y, y_try)
        d_t = (g_t * direction).sum(-1)
        finite = torch.isfinite(f_t) & torch.isfinite(d_t)
        armijo = _sufficient_decrease(value, slope0, t, f_t, d_t, c1, eps)
        wolfe = armijo & (d_t.abs() <= c2 * slope0.abs())
        better = armijo & ~done & (~have_armijo | (f_t < v_acc))
        take = (wolfe & ~done) | better
        y_acc = torch.where(take[:, None], y_try, y_acc)
        v_acc = torch.where(take, f_t, v_acc)
        g_acc = torch.where(take[:, None], g_t, g_acc)
        t_acc = torch.where(take, t, t_acc)
        have_armijo = have_armijo | (armijo & ~done)
        done = done | wolfe
        if bool(done.all()):
            break
        # update the bracket [lo, hi] (derivative-driven, as Hager & Zhang: robust where f is flat to rounding)
        active = ~done
        to_hi = active & (~armijo | (d_t >= 0))
        to_lo = active & ~to_hi
        hi = torch.where(to_hi, t, hi)
        f_hi = torch.where(to_hi, torch.where(finite, f_t, inf), f_hi)
        d_hi = torch.where(to_hi, torch.where(finite & armijo, d_t, torch.full_like(d_t, float("nan"))), d_hi)
        lo = torch.where(to_lo, t, lo)
        f_lo = torch.where(to_lo, f_t, f_lo)
        d_lo = torch.where(to_lo, d_t, d_lo)
        # next trial: expand while unbracketed; else secant on slopes, else quadratic on values, else bisect.
        # The placeholders (hi = inf, d_hi = NaN, f_hi = inf) never enter the arithmetic: they are swapped for
        # finite stand-ins first (the "double where"), since a discarded inf or NaN branch of a where still
        # turns the unrolled backward pass into NaN (0 * inf).
        bracketed = torch.isfinite(hi)
        hi_s = torch.where(bracketed, hi, lo + 1)
        d_ok = torch.isfinite(d_hi) & (d_hi > d_lo)
        d_den = torch.where(d_ok, d_hi - d_lo, torch.ones_like(d_lo))
        d_hi_s = torch.where(d_ok, d_hi, d_lo + 1)
        f_hi_s = torch.where(torch.isfinite(f_hi), f_hi, f_lo)
        width = hi_s - lo
        secant = (lo * d_hi_s - hi_s * d_lo) / d_den
        ok_secant = d_ok & torch.isfinite(secant)
        denom = 2 * (f_hi_s - f_lo - d_lo * width)
        ok_denom = torch.isfinite(f_hi) & (denom > 0)
        quad = lo - d_lo * width * width / torch.where(ok_denom, denom, torch.ones_like(denom))
        ok_quad = ok_denom & torch.isfinite(quad)
        mid = 0.5 * (lo + hi_s)
        pad = 0.1 * width
        inner = torch.where(ok_secant, secant, torch.where(ok_quad, quad, mid))
        inner = torch.where(torch.isfinite(inner), inner, mid).clamp(lo + pad, hi_s - pad)
        t = torch.where(bracketed, inner, 2.0 * lo.clamp_min(torch.finfo(lo.dtype).tiny))
    ok = done | have_armijo
    status = torch.where(ok, int(RESULTS.successful), int(RESULTS.line_search_failed)).to(torch.int64)
    return LineSearchResult(y_acc, v_acc, g_acc, t_acc, status)
