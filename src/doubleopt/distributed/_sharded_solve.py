"""Sharded batched solves: a batch of instances split across the ranks of a ``torchrun`` launch."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from .._problem import Context, Problem, batch_size
from .._solution import Solution, SolveError
from .._solve import solve
from .._tree import tree_map
from ..solvers import Solver
from ._check import check_same, run_identity
from ._comm import Comm

_GATHERED = ("y", "value", "result", "num_steps", "stationarity")
_SUMMED_STATS = ("f_evals", "grad_evals", "hvp_evals")


def shard_context(x: Context, rows: range, B: int) -> Context:
    """Rows ``rows`` of a context: leaves with leading dimension ``B`` are sliced (views), the others (shared by
    the batch) are kept.

    Example:
        >>> import torch
        >>> shard_context(torch.arange(6.0).reshape(3, 2), range(1, 3), 3)
        tensor([[2., 3.],
                [4., 5.]])
    """
    return tree_map(lambda t: t[rows.start : rows.stop] if t.dim() > 0 and t.shape[0] == B else t, x)


def sharded_solve(
    problem: Problem,
    solver: Solver,
    x: Context,
    y0: Tensor | None = None,
    *,
    comm: Comm | None = None,
    throw: bool = True,
    **solve_options: Any,
) -> Solution:
    r"""Solve a batch of ``B`` instances split across the processes of ``comm``; every rank gets all results.

    Every rank passes the same full batch ``x`` (and ``y0``); rank ``r`` solves its contiguous part
    (``comm.shard(B)``: sizes differ by at most one) with :func:`doubleopt.solve`, and ``y``, ``value``,
    ``result``, ``num_steps`` and ``stationarity`` are gathered (``all_gather``) in instance order on every
    rank. Each instance is solved exactly as a single-process ``do.solve`` on the whole batch solves it
    (solves are per instance; finished instances leave the batch), so results and codes agree instance by
    instance. Pass ``y0`` when the problem's default start is random.

    A start-up check compares ``B``, the problem, the solver and the options across ranks and raises a
    ``ValueError`` naming any difference. Solutions are detached (no adjoint across processes);
    ``Solution.state`` is ``None``; ``stats`` sums the evaluation counts over ranks and reports the slowest
    rank's ``wall_time`` and the ``processes`` count.

    Args:
        problem: as for :func:`doubleopt.solve`.
        solver: as for :func:`doubleopt.solve`.
        x: as for :func:`doubleopt.solve`: the whole batch, on every rank.
        y0: as for :func:`doubleopt.solve`: the whole batch, on every rank.
        comm: the process group (default: :func:`~doubleopt.distributed.init_from_env`, one process outside
            ``torchrun``).
        throw: raise :class:`~doubleopt.SolveError` (on every rank, instance indices of the whole batch) if any
            instance failed; ``False`` returns the codes.
        **solve_options: ``max_steps``, ``tol``, ``rtol``, ``adjoint`` ... passed to :func:`doubleopt.solve`.

    Example:
        >>> import torch, doubleopt as do
        >>> from doubleopt.distributed import sharded_solve
        >>> fam = do.problems.LogisticRegression(n_features=3, n_points=50)
        >>> x = fam.sample(10, generator=torch.Generator().manual_seed(0))
        >>> sol = sharded_solve(fam, do.LBFGS(), x, max_steps=100, tol=1e-6, throw=False)  # one process here
        >>> sol.y.shape, sol.stats["processes"]
        (torch.Size([10, 4]), 1)
    """
    from ._comm import init_from_env

    comm = init_from_env() if comm is None else comm
    if "trace" in solve_options or "progress" in solve_options:
        raise ValueError("sharded_solve does not take trace or progress (per-rank traces are not gathered)")
    B = batch_size(x) if y0 is None else int(y0.shape[0])
    check_same(
        comm,
        run_identity(
            batch=B,
            problem=type(problem).__name__,
            dim=problem.dim,
            solver=repr(solver),
            options={k: repr(v) for k, v in sorted(solve_options.items())},
            y0=None if y0 is None else [list(y0.shape), str(y0.dtype)],
        ),
        what="sharded solve's configuration",
    )
    rows = comm.shard(B)
    x_part = shard_context(x, rows, B)
    y0_part = None if y0 is None else y0[rows.start : rows.stop]
    start = time.perf_counter()
    with torch.no_grad():
        part = solve(problem, solver, x_part, y0_part, throw=False, **solve_options)
    wall = time.perf_counter() - start
    gathered = {name: comm.gather_rows(getattr(part, name).detach()) for name in _GATHERED}
    counts = comm.sum([torch.tensor([float(part.stats.get(k, 0)) for k in _SUMMED_STATS], dtype=torch.float64)])[0]
    walls = comm.gather(torch.tensor([wall], dtype=torch.float64))
    stats = {
        **{k: v for k, v in part.stats.items() if k not in _SUMMED_STATS and k != "wall_time"},
        **{k: int(c) for k, c in zip(_SUMMED_STATS, counts.tolist())},
        "wall_time": max(float(w) for w in walls),
        "processes": comm.world,
    }
    sol = Solution(**gathered, stats=stats)
    if throw and not bool(sol.successful.all()):
        raise SolveError(sol)
    return sol
