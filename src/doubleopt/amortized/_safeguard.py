r"""Certified amortization: check every amortized answer, fall back to a classical solver only where needed.

:class:`Safeguarded` ``(amortized, certificate, fallback, tol)`` solves a batch in three stages:

1. run the amortized solver (fully or semi-amortized) on the whole batch through :func:`doubleopt.solve`;
2. compute each instance's certificate :math:`r_i = r(\hat y_i; x_i)`; instances with :math:`r_i \le`
   ``tol`` are *certified* and returned as they are;
3. run ``fallback`` only on the other instances (a sub-batch), warm-started from their amortized answers,
   then certify its answers again with the same certificate (optionally in rounds of growing length on
   the shrinking set of still-uncertified instances, ``round_steps``).

The returned :class:`~doubleopt.Solution` has ``certified`` (passed directly) and ``fell_back`` (the fallback
ran) per instance. ``result`` is ``successful`` only for instances whose final answer passes the
certificate; a fallback that stops by its own criterion without passing the certificate gives
``not_certified``, one that runs out of steps ``max_steps_reached``, non-finite input ``nonfinite``. So an
out-of-distribution context, where the model is wrong, never comes back as an uncertified success.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .._problem import batch_size
from .._solution import RESULTS, Solution, SolveError
from .._solve import solve
from .._tree import tree_map
from ..solvers._base import Solver
from ._certificates import Certificate, default_certificate
from ._solvers import SemiAmortized


def index_context(x, index: Tensor, B: int):
    """The sub-batch ``index`` of a context: batched leaves (leading dim ``B``) are indexed, others kept."""
    return tree_map(lambda t: t[index] if t.dim() > 0 and t.shape[0] == B else t, x)


@dataclass(frozen=True)
class Safeguarded:
    """An amortized solver with a per-instance certificate and a warm-started fallback.

    Args:
        amortized: a :class:`FullyAmortized` / :class:`SemiAmortized` solver.
        certificate: the check (default: the problem's natural one: gradient norm, marginal error, KKT).
        fallback: a classical solver run only where the check fails, from the amortized answer.
        tol: the certificate threshold.
        fallback_steps: step budget of the fallback.
        round_steps: if set, the fallback runs in rounds of ``round_steps``, ``2 round_steps``, ... steps,
            each on the instances still uncertified, restarted from their last iterate (compaction: finished
            instances stop costing work). Lossless for solvers whose state is a function of ``y``
            (Sinkhorn, GD); solvers with memory (L-BFGS, Adam) restart it each round. ``None``: one round.

    Example:
        >>> import torch, doubleopt as do
        >>> fam = do.problems.Quadratic(dim=3, dtype=torch.float64)
        >>> x = fam.sample(8, seed=0)
        >>> class Zero(torch.nn.Module):  # a (bad) model: always predicts 0
        ...     def forward(self, x):
        ...         return torch.zeros_like(x.b)
        >>> amortized = do.amortized.FullyAmortized(Zero())
        >>> guard = do.amortized.Safeguarded(amortized, fallback=do.LBFGS(), tol=1e-6)
        >>> sol = guard.solve(fam, x)
        >>> sol.summary(), bool(sol.fell_back.all()), bool(sol.certified.any())
        ('8 successful', True, False)
    """

    amortized: SemiAmortized
    certificate: Certificate | None = None
    fallback: Solver | None = None
    tol: float = 1e-5
    fallback_steps: int = 1000
    round_steps: int | None = None

    def __post_init__(self):
        if not isinstance(self.amortized, SemiAmortized):
            raise TypeError(
                "amortized must be do.amortized.FullyAmortized(...) or SemiAmortized(...), "
                f"got {type(self.amortized).__name__}"
            )
        if self.fallback is None or not isinstance(self.fallback, Solver):
            raise TypeError(f"fallback must be a doubleopt solver (e.g. do.LBFGS()), got {self.fallback!r}")
        if not self.tol >= 0:
            raise ValueError(f"tol must be >= 0, got {self.tol}")
        from ..solvers._base import check_setting

        check_setting("fallback_steps", self.fallback_steps, low=0, integer=True)
        if self.round_steps is not None:
            check_setting("round_steps", self.round_steps, low=1, integer=True)

    def solve(self, problem, x, *, throw: bool = False, fallback_tol: float | None = None) -> Solution:
        """Solve the batch (see the module docstring). Runs without autograd (an inference-time safeguard).

        Args:
            fallback_tol: the fallback's own stopping tolerance (default ``tol``).
            throw: raise :class:`~doubleopt.SolveError` if some instance is not certified in the end.
        """
        cert = self.certificate or default_certificate(problem)
        start = time.perf_counter()
        with torch.no_grad():
            amort = solve(problem, self.amortized, x, tol=self.tol, max_steps=self.amortized.steps + 2, throw=False)
            y = amort.y
            B = y.shape[0]
            residual = cert(problem, y, x)
            bad_input = amort.result == RESULTS.nonfinite
            certified = (residual <= self.tol) & ~bad_input
            need = ~certified & ~bad_input
            result = torch.where(certified, int(RESULTS.successful), amort.result)
            result = torch.where(need, int(RESULTS.not_certified), result)
            num_steps = amort.num_steps.clone()
            value = amort.value.clone()
            fb_stats = {"fallback_instances": int(need.sum()), "fallback_wall_time": 0.0, "fallback_steps": 0}
            remaining = need.nonzero().flatten()
            y = y.clone()
            residual = residual.clone()
            B_ctx = batch_size(x) if B else 0
            y_cur = y[remaining]
            budget, k = self.fallback_steps, self.round_steps or self.fallback_steps
            while remaining.numel() > 0 and budget > 0:
                k = min(k, budget)
                xs = index_context(x, remaining, B_ctx)
                y_cur = torch.where(torch.isfinite(y_cur).all(-1, keepdim=True), y_cur, problem.init(xs))
                fb = solve(
                    problem,
                    self.fallback,
                    xs,
                    y_cur,
                    tol=self.tol if fallback_tol is None else fallback_tol,
                    max_steps=k,
                    throw=False,
                )
                r_fb = cert(problem, fb.y, xs)
                ok = r_fb <= self.tol
                code = torch.where(fb.result == RESULTS.successful, int(RESULTS.not_certified), fb.result)
                code = torch.where(ok, int(RESULTS.successful), code)
                y[remaining] = fb.y
                residual[remaining] = r_fb
                result[remaining] = code
                num_steps[remaining] = num_steps[remaining] + fb.num_steps
                value[remaining] = fb.value
                fb_stats["fallback_wall_time"] += fb.stats["wall_time"]
                fb_stats["fallback_steps"] += int(fb.num_steps.max())
                fb_stats["fallback_rounds"] = fb_stats.get("fallback_rounds", 0) + 1
                budget -= k
                go_on = (fb.result == RESULTS.max_steps_reached) & ~ok
                remaining, y_cur = remaining[go_on], fb.y[go_on]
                k *= 2
        sol = Solution(
            y=y,
            value=value,
            result=result,
            num_steps=num_steps,
            stationarity=residual,
            stats={
                **amort.stats,
                "wall_time": time.perf_counter() - start,
                "solver": "Safeguarded",
                "amortized_wall_time": amort.stats["wall_time"],
                "certificate": type(cert).__name__,
                "tol": self.tol,
                "certified_fraction": float(certified.float().mean()) if B else 1.0,
                **fb_stats,
            },
            certified=certified,
            fell_back=need,
        )
        if throw and not bool(sol.successful.all()):
            raise SolveError(sol)
        return sol

    __call__ = solve
