"""Result codes and the :class:`Solution` returned by :func:`doubleopt.solve`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


class RESULTS(enum.IntEnum):
    """Per-instance result codes. ``RESULTS.x.message`` is the human-readable explanation.

    The codes are plain integers so they can live in a ``(B,)`` integer tensor and be compared directly::

        (sol.result == do.RESULTS.successful).all()
    """

    successful = 0
    max_steps_reached = 1
    nonfinite = 2
    infeasible = 3
    unbounded = 4
    linear_solver_failed = 5
    line_search_failed = 6
    not_certified = 7

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @classmethod
    def describe(cls, code: int) -> str:
        """``'name: message'`` for an integer code."""
        member = cls(int(code))
        return f"{member.name}: {member.message}"


_MESSAGES = {
    RESULTS.successful: "converged: the stopping tolerance was met",
    RESULTS.max_steps_reached: "the maximum number of steps was reached before the tolerance was met",
    RESULTS.nonfinite: "a non-finite value (NaN or inf) appeared in the iterate or the objective; "
    "the last finite iterate is returned",
    RESULTS.infeasible: "the problem is (primal) infeasible",
    RESULTS.unbounded: "the problem is unbounded below (dual infeasible)",
    RESULTS.linear_solver_failed: "a linear solve inside the solver failed (singular or indefinite system)",
    RESULTS.line_search_failed: "the line search could not find a decrease along the search direction",
    RESULTS.not_certified: "the answer failed its optimality certificate and no fallback was run",
}


class SolveError(RuntimeError):
    """Raised by ``solve(..., throw=True)`` when some instances did not succeed.

    Attributes:
        result: the ``(B,)`` result codes.
        failed: indices of the instances whose code is not ``successful``.
        solution: the full :class:`Solution` (so nothing is lost when throwing).
    """

    def __init__(self, solution: Solution):
        self.solution = solution
        self.result = solution.result
        self.failed = torch.nonzero(solution.result != RESULTS.successful).flatten().tolist()
        super().__init__(describe_failures(solution.result))


def describe_failures(result: Tensor, limit: int = 10) -> str:
    """A message naming each failing code and (up to ``limit``) the failing instance indices."""
    lines = []
    total = int(result.numel())
    for code in torch.unique(result).tolist():
        if code == RESULTS.successful:
            continue
        idx = torch.nonzero(result == code).flatten().tolist()
        shown = ", ".join(map(str, idx[:limit])) + (", ..." if len(idx) > limit else "")
        lines.append(f"  {len(idx)}/{total} instances {RESULTS.describe(code)} (indices {shown})")
    if not lines:
        return "all instances successful"
    return "solve failed for some instances:\n" + "\n".join(lines)


@dataclass
class Solution:
    """What :func:`doubleopt.solve` returns.

    Attributes:
        y: ``(B, n)`` solutions (differentiable according to the adjoint).
        value: ``(B,)`` objective values at ``y``.
        result: ``(B,)`` int64 codes from :class:`RESULTS`.
        num_steps: ``(B,)`` steps each instance took before it stopped.
        stationarity: ``(B,)`` the final stationarity measure (gradient norm, or gradient-mapping norm
            for composite problems).
        stats: batch-wide statistics: ``f_evals``, ``grad_evals``, ``wall_time`` (s), ``max_steps``,
            ``tol``, ``solver``.
        state: the solver's final state (a dataclass of tensors).
        trace: ``(T+1, B)`` objective values per step when ``solve(..., trace=True)``, else ``None``.
        trace_times: ``(T+1,)`` wall time (s) since the loop started at each traced step (for
            objective-vs-time curves), else ``None``.
        certified: ``(B,)`` bool, set by :class:`doubleopt.amortized.Safeguarded`: the amortized answer
            passed its certificate directly (``None`` for plain solves).
        fell_back: ``(B,)`` bool, set by :class:`doubleopt.amortized.Safeguarded`: the fallback solver ran
            for this instance, warm-started from the amortized answer (``None`` for plain solves).
    """

    y: Tensor
    value: Tensor
    result: Tensor
    num_steps: Tensor
    stationarity: Tensor
    stats: dict[str, Any] = field(default_factory=dict)
    state: Any = None
    trace: Tensor | None = None
    trace_times: Tensor | None = None
    certified: Tensor | None = None
    fell_back: Tensor | None = None

    @property
    def successful(self) -> Tensor:
        """``(B,)`` bool: which instances converged."""
        return self.result == RESULTS.successful

    def messages(self) -> list[str]:
        """One human-readable line per instance."""
        return [RESULTS.describe(c) for c in self.result.tolist()]

    def summary(self) -> str:
        """Counts of each result code, e.g. ``'250 successful, 6 max_steps_reached'``."""
        codes, counts = torch.unique(self.result, return_counts=True)
        return ", ".join(f"{n} {RESULTS(int(c)).name}" for c, n in zip(codes.tolist(), counts.tolist()))
