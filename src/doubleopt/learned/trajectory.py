r"""Optimizee trajectories driven by a solver with a fresh minibatch at every step.

An optimizee trajectory is the core solver loop with a new context at every step. The solver state holds
``value`` and ``grad`` at the current iterate :math:`\theta_t` *on the minibatch* :math:`x_t` *it was
evaluated on*. One optimizee step is ``solver.step(problem, theta_t, x_{t+1}, state_t)``: it applies the
learned update to ``state_t.grad`` (:math:`\nabla f(\theta_t; x_t)`), moves to :math:`\theta_{t+1}`, and
evaluates :math:`\nabla f(\theta_{t+1}; x_{t+1})` on the next minibatch, so every gradient is computed once, at
the iterate where it is used, on a minibatch drawn for that iterate (plain SGD semantics; no recomputation of
the old gradient on the new batch is needed). A :class:`Carry` holds the state between truncations, so the
first step of a truncation uses the gradient computed at the end of the previous one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._tree import tree_tensors
from ..solvers import Solver
from ._tasks import Task


@dataclass
class Carry:
    """An optimizee trajectory between truncations: iterate, solver state, task instance data, step."""

    y: Tensor
    state: Any
    inst: Any
    t: Tensor  # 0-d int64


def start_trajectory(solver: Solver, task: Task, batch: int, generator: torch.Generator) -> Carry:
    """Draw ``batch`` new optimizees and evaluate the gradient at :math:`\\theta_0` on a first minibatch."""
    inst, y0 = task.reset(batch, generator)
    x0 = task.train_batch(inst, generator)
    with torch.no_grad():
        state = solver.init(task.problem, y0, x0)
    return Carry(y0, state, inst, torch.zeros((), dtype=torch.int64))


def unroll(
    solver: Solver,
    task: Task,
    carry: Carry,
    steps: int,
    generator: torch.Generator,
    eval_fn: Callable[[Tensor, Any], Tensor] | None = None,
) -> tuple[Tensor, Carry]:
    """Run ``steps`` optimizee steps from ``carry`` with a fresh minibatch each step.

    Returns ``(losses (steps, B), new_carry)``: ``losses[k]`` is the objective at :math:`\\theta_{t+k+1}` on a
    held-out batch (``task.eval_batch``), or ``eval_fn(theta, inst)`` if given. Differentiable with respect
    to the optimizer's weights when grad mode is on.
    """
    y, state = carry.y, carry.state
    losses = []
    for _ in range(steps):
        x = task.train_batch(carry.inst, generator)
        y, state = solver.step(task.problem, y, x, state)
        if eval_fn is None:
            losses.append(task.problem.objective(y, task.eval_batch(carry.inst, generator)))
        else:
            losses.append(eval_fn(y, carry.inst))
    return torch.stack(losses), Carry(y, state, carry.inst, carry.t + steps)


def finite_carry(c: Carry) -> bool:
    """Whether every floating-point tensor of the iterate and solver state is finite."""
    return all(bool(torch.isfinite(t).all()) for t in tree_tensors((c.y, c.state)) if t.is_floating_point())


def rollout(
    solver: Solver,
    task: Task,
    batch: int,
    steps: int,
    generator: torch.Generator,
    eval_fn: Callable[[Tensor, Any], Tensor] | None = None,
) -> Tensor:
    """Losses ``(steps + 1, batch)`` of ``solver`` (learned or classical) over a fresh trajectory, no grad.

    Row 0 is the loss at :math:`\\theta_0`. ``eval_fn(theta, inst)`` defaults to a held-out minibatch loss.
    """
    with torch.no_grad():
        carry = start_trajectory(solver, task, batch, generator)
        first = (
            eval_fn(carry.y, carry.inst)
            if eval_fn is not None
            else task.problem.objective(carry.y, task.eval_batch(carry.inst, generator))
        )
        losses, _ = unroll(solver, task, carry, steps, generator, eval_fn)
    return torch.cat([first[None], losses])


__all__ = ["Carry", "start_trajectory", "unroll", "finite_carry", "rollout"]
