r"""Batched log-domain Sinkhorn for entropic optimal transport (:class:`~doubleopt.problems.EntropicOT`).

The iterate is the dual potential :math:`f \in \mathbb{R}^{B \times n}`; one step is the pair of
block-coordinate ascent updates on the entropic dual, in log domain:

.. math::
    f_i \leftarrow \varepsilon \log a_i - \varepsilon \log \sum_j e^{(g_j - C_{ij})/\varepsilon}, \qquad
    g_j \leftarrow \varepsilon \log b_j - \varepsilon \log \sum_i e^{(f_i - C_{ij})/\varepsilon} .

After each step the column marginal of :math:`P_{ij} = e^{(f_i + g_j - C_{ij})/\varepsilon}` is exact and
the stationarity measure is the row marginal error :math:`\|P\mathbf{1} - a\|_1`, which is also
:math:`\|\nabla F(f)\|_1` of the problem's semi-dual objective, so ``solve(..., tol=1e-4)`` stops each
instance at marginal error 1e-4. Each step costs two soft-min passes (two batched matrix products on the
shifted kernels, see :mod:`doubleopt.problems.ot`); the row soft-min of the new ``g`` gives both the
gradient and the next ``f`` update, so nothing is computed twice.

A warm start is simply ``y0``: a potential predicted by a model (Meta OT) or the previous solution.

Example:
    >>> import torch, doubleopt as do
    >>> fam = do.problems.DigitsOT(split="test")
    >>> x = fam.sample(16, seed=0)
    >>> sol = do.solve(fam, do.solvers.Sinkhorn(), x, tol=1e-4, max_steps=5000)
    >>> bool((fam.marginal_error(sol.y, x) <= 1e-4).all())
    True

References:
    Cuturi, "Sinkhorn distances", NeurIPS 2013; Peyre & Cuturi, "Computational optimal transport", 2019,
    section 4.4 (log-domain stabilization).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._base import Solver


@dataclass
class SinkhornState:
    value: Tensor  # (B,) negative dual objective F(f)
    grad: Tensor  # (B, n) row-marginal violation P 1 - a
    g: Tensor  # (B, m) c-transform of f
    lse_row: Tensor  # (B, n) log sum_j exp((g_j - C_ij)/eps)


@dataclass(frozen=True)
class Sinkhorn(Solver):
    """Log-domain Sinkhorn iterations on the dual potential ``f`` (see the module docstring)."""

    def check_problem(self, problem) -> None:
        if not hasattr(problem, "evaluate") or not hasattr(problem, "lse_rows"):
            raise ValueError(
                f"Sinkhorn needs an entropic OT problem (do.problems.EntropicOT and its families), "
                f"got {type(problem).__name__}"
            )
        super().check_problem(problem)

    def _state(self, problem, f, x) -> SinkhornState:
        ev = problem.evaluate(f, x)
        return SinkhornState(ev.value, ev.grad, ev.g, ev.lse_row)

    def init(self, problem, y, x):
        return self._state(problem, y, x)

    def step(self, problem, y, x, state):
        f = problem.eps * (torch.log(x.a) - state.lse_row)
        return f, self._state(problem, f, x)

    def stationarity(self, problem, y, x, state):
        return state.grad.abs().sum(-1)
