"""The base class of every solver, :class:`Solver` (re-exported as :class:`doubleopt.solvers.Solver`).

It lives below both :mod:`doubleopt._solve` (which checks that a solver is one) and :mod:`doubleopt.solvers`
(whose solvers subclass it, and whose QP entry point calls :func:`doubleopt.solve`), so neither of those two
imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._tree import tree_index

if TYPE_CHECKING:
    from ._problem import Context, Problem


@dataclass(frozen=True)
class Solver:
    """Base class of all solvers: ``init / step / stationarity / postprocess``.

    ``supports_composite`` says whether the solver handles ``f = s + g`` problems (proximal solvers);
    smooth solvers refuse composite problems with a clear error. ``uses_start = False`` says that the solver
    ignores ``y0`` (amortized solvers). ``loop_compact_below = r > 0`` lets the solve loop gather the
    unfinished instances once fewer than ``r`` of the batch remain (only for solvers whose state and context
    are batch-first and whose steps are per instance; see :func:`doubleopt._iterate.iterate`); the loop
    gathers the context with :meth:`take_context`.
    """

    supports_composite = False
    supports_smooth = True
    # False: the solver ignores y0 (an amortized solver predicts its own start), so do.solve's default y0
    # is a zero placeholder instead of problem.init(x), which may itself cost a solve (a QP's cold start)
    uses_start = True
    loop_compact_below = 0.0

    def check_problem(self, problem: Problem) -> None:
        name = type(self).__name__
        if problem.is_composite and not self.supports_composite:
            raise ValueError(
                f"{name} is a smooth solver but {type(problem).__name__} is composite (f = smooth + g); "
                "use a proximal solver such as do.ISTA() or do.FISTA()"
            )
        if not problem.is_composite and not self.supports_smooth:
            raise ValueError(f"{name} needs a composite problem (f = smooth + g with a prox)")

    def init(self, problem: Problem, y: Tensor, x: Context) -> Any:
        raise NotImplementedError

    def take_context(self, x: Context, index: Tensor) -> Context:
        """Instances ``index`` of the context ``x`` (loop compaction). Default: every batched leaf indexed;
        a solver overrides it to keep matrices shared by the batch shared or to carry per-solve constants."""
        return tree_index(x, index)

    def initial_iterate(self, problem: Problem, y: Tensor, x: Context, state: Any) -> Tensor:
        """The iterate the loop starts from, called once right after :meth:`init`. Default ``y``; a solver whose
        ``init`` already moved the instances (the QP's native kernel solves them there) returns where they are."""
        return y

    def step(self, problem: Problem, y: Tensor, x: Context, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def current_value(self, state: Any) -> Tensor:
        """Objective value at the current iterate, ``(B,)``."""
        return state.value

    def stationarity(self, problem: Problem, y: Tensor, x: Context, state: Any) -> Tensor:
        """Per-instance stationarity measure compared with ``tol`` (default: gradient 2-norm)."""
        return torch.linalg.vector_norm(state.grad, dim=-1)

    def postprocess(self, problem: Problem, y: Tensor, x: Context, state: Any, result: Tensor):
        return y, result
