"""The inverted pendulum (gymnasium's ``Pendulum-v1``) as a batched PyTorch environment.

State ``(theta, theta_dot)`` per environment; the dynamics, reward and bounds are gymnasium's:

.. math::
    r_t = -\\big(\\bar\\theta_t^2 + 0.1\\,\\dot\\theta_t^2 + 0.001\\,u_t^2\\big),\\qquad
    \\dot\\theta_{t+1} = \\mathrm{clip}\\big(\\dot\\theta_t
        + (\\tfrac{3g}{2l}\\sin\\theta_t + \\tfrac{3}{ml^2}u_t)\\,dt, \\pm 8\\big),\\qquad
    \\theta_{t+1} = \\theta_t + \\dot\\theta_{t+1}\\,dt

with ``u_t = clip(a_t, -2, 2)``, ``theta_bar`` the angle wrapped to ``[-pi, pi)``, ``g = 10``, ``m = l = 1``,
``dt = 0.05``; observations ``(cos theta, sin theta, theta_dot)``; episodes end by truncation after 200
steps (never by termination). Resets draw ``theta ~ U(-pi, pi)``, ``theta_dot ~ U(-1, 1)`` from each
agent's own generator. Checked step by step against ``gymnasium.make("Pendulum-v1")`` in the tests.

The batch has shape ``(K, E)``: ``K`` agents with ``E`` environments each.

Example:
    >>> import torch
    >>> env = BatchedPendulum(agents=2, envs_per_agent=3)
    >>> obs = env.reset(agent_generators([0, 1]))
    >>> obs.shape
    torch.Size([2, 3, 3])
    >>> step = env.step(torch.zeros(2, 3, 1))
    >>> step.reward.shape, bool(step.truncated.any())
    (torch.Size([2, 3]), False)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .stacked import agent_generators  # noqa: F401  (re-exported for the docstring example)


@dataclass
class EnvStep:
    """One transition of every environment (shapes ``(K, E, ...)``).

    ``next_obs`` is the observation the action led to (before any reset); ``obs`` is where the next
    step starts (the reset observation where an episode ended).
    """

    next_obs: Tensor
    reward: Tensor
    terminated: Tensor
    truncated: Tensor
    obs: Tensor


class BatchedPendulum:
    """``K x E`` pendulums stepped as tensors; actions in torque units, clipped to ``[-2, 2]`` and counted."""

    name = "Pendulum-v1"
    obs_dim = 3
    act_dim = 1
    max_torque = 2.0
    max_speed = 8.0
    dt = 0.05
    g = 10.0
    m = 1.0
    l = 1.0
    max_episode_steps = 200

    def __init__(self, agents: int, envs_per_agent: int = 1, dtype: torch.dtype = torch.float32):
        if agents < 1 or envs_per_agent < 1:
            raise ValueError(f"need at least one agent and one environment, got {agents} x {envs_per_agent}")
        self.agents, self.envs, self.dtype = agents, envs_per_agent, dtype
        self.theta = torch.zeros(agents, envs_per_agent, dtype=torch.float64)
        self.theta_dot = torch.zeros(agents, envs_per_agent, dtype=torch.float64)
        self.elapsed = torch.zeros(agents, envs_per_agent, dtype=torch.int64)
        self.clipped_actions = torch.zeros(agents, dtype=torch.int64)
        self._generators: list[torch.Generator] | None = None

    # ---- state ------------------------------------------------------------------------------
    def observe(self) -> Tensor:
        th, thd = self.theta, self.theta_dot
        return torch.stack([torch.cos(th), torch.sin(th), thd], dim=-1).to(self.dtype)

    def set_state(self, theta: Tensor, theta_dot: Tensor) -> Tensor:
        """Put every environment at ``(theta, theta_dot)`` (shapes ``(K, E)``); returns the observation."""
        self.theta = torch.as_tensor(theta, dtype=torch.float64).expand(self.agents, self.envs).clone()
        self.theta_dot = torch.as_tensor(theta_dot, dtype=torch.float64).expand(self.agents, self.envs).clone()
        self.elapsed.zero_()
        return self.observe()

    def reset(self, generators: Sequence[torch.Generator]) -> Tensor:
        """Reset every environment from the agents' generators (agent ``k`` draws ``E`` states from its own)."""
        if len(generators) != self.agents:
            raise ValueError(f"reset needs one generator per agent ({self.agents}), got {len(generators)}")
        self._generators = list(generators)
        self._reset_where(torch.ones(self.agents, self.envs, dtype=torch.bool))
        return self.observe()

    def _reset_where(self, done: Tensor) -> None:
        assert self._generators is not None, "call reset(generators) first"
        for k in torch.nonzero(done.any(dim=1)).flatten().tolist():
            u = torch.rand(self.envs, 2, generator=self._generators[k], dtype=torch.float64) * 2 - 1
            rows = done[k]
            self.theta[k, rows] = u[rows, 0] * math.pi
            self.theta_dot[k, rows] = u[rows, 1]
            self.elapsed[k, rows] = 0

    # ---- dynamics ---------------------------------------------------------------------------
    def step(self, action: Tensor) -> EnvStep:
        """Advance every environment by one step with ``action`` of shape ``(K, E, 1)`` (torque units).

        Actions outside ``[-2, 2]`` are clipped and counted per agent in ``clipped_actions``; finished
        episodes (200 steps) are reset from the agents' generators after the transition is recorded.
        """
        if action.shape != (self.agents, self.envs, self.act_dim):
            raise ValueError(
                f"action must have shape {(self.agents, self.envs, self.act_dim)}, got {tuple(action.shape)}"
            )
        u = action[..., 0].to(torch.float64)
        outside = (u.abs() > self.max_torque).sum(dim=1)
        self.clipped_actions += outside
        u = u.clamp(-self.max_torque, self.max_torque)
        th, thd = self.theta, self.theta_dot
        th_norm = torch.remainder(th + math.pi, 2 * math.pi) - math.pi
        cost = th_norm**2 + 0.1 * thd**2 + 0.001 * u**2
        new_thd = thd + (3 * self.g / (2 * self.l) * torch.sin(th) + 3.0 / (self.m * self.l**2) * u) * self.dt
        new_thd = new_thd.clamp(-self.max_speed, self.max_speed)
        self.theta = th + new_thd * self.dt
        self.theta_dot = new_thd
        self.elapsed += 1
        next_obs = self.observe()
        truncated = self.elapsed >= self.max_episode_steps
        terminated = torch.zeros_like(truncated)
        if bool(truncated.any()) and self._generators is not None:
            self._reset_where(truncated)
        return EnvStep(next_obs, (-cost).to(self.dtype), terminated, truncated, self.observe())


def gym_pendulum_states(envs) -> tuple[Tensor, Tensor]:
    """``(theta, theta_dot)`` of a list of gymnasium pendulums (their unwrapped ``state``)."""
    import numpy as np

    st = np.stack([e.unwrapped.state for e in envs])
    return torch.as_tensor(st[:, 0]), torch.as_tensor(st[:, 1])
