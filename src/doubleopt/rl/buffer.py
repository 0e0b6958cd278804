"""A replay buffer in tensors: one ring buffer per agent, sampled per agent from its own generator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """A minibatch per agent: ``obs (K, N, obs_dim)``, ``action (K, N, act_dim)``, ``reward (K, N)``,
    ``next_obs (K, N, obs_dim)``, ``done (K, N)`` (1 where the episode terminated: no bootstrap)."""

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    done: Tensor


class ReplayBuffer:
    """``K`` ring buffers of ``capacity`` transitions each, stored as ``(K, capacity, ...)`` tensors.

    Every agent adds the same number of transitions per step (its ``E`` environments), so one write
    position serves all; :meth:`sample` draws ``N`` indices uniformly among each agent's stored
    transitions with that agent's generator (uniform with replacement, like Stable-Baselines3).

    Example:
        >>> import torch
        >>> buf = ReplayBuffer(agents=2, capacity=10, obs_dim=3, act_dim=1)
        >>> buf.add(torch.zeros(2, 4, 3), torch.zeros(2, 4, 1), torch.ones(2, 4), torch.zeros(2, 4, 3),
        ...         torch.zeros(2, 4))
        >>> b = buf.sample(5, [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])
        >>> b.reward.shape, len(buf)
        (torch.Size([2, 5]), 4)
    """

    FIELDS = ("obs", "action", "reward", "next_obs", "done")

    def __init__(self, agents: int, capacity: int, obs_dim: int, act_dim: int, dtype: torch.dtype = torch.float32):
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.agents, self.capacity = agents, capacity
        self.obs = torch.zeros(agents, capacity, obs_dim, dtype=dtype)
        self.action = torch.zeros(agents, capacity, act_dim, dtype=dtype)
        self.reward = torch.zeros(agents, capacity, dtype=dtype)
        self.next_obs = torch.zeros(agents, capacity, obs_dim, dtype=dtype)
        self.done = torch.zeros(agents, capacity, dtype=dtype)
        self.position = 0
        self.size = 0
        self._rows = torch.arange(agents).unsqueeze(1)

    def __len__(self) -> int:
        return self.size

    def add(self, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, done: Tensor) -> None:
        """Append ``E`` transitions per agent (each argument shaped ``(K, E, ...)``)."""
        e = obs.shape[1]
        idx = (self.position + torch.arange(e)) % self.capacity
        for name, value in zip(self.FIELDS, (obs, action, reward, next_obs, done)):
            getattr(self, name)[:, idx] = value.to(self.obs.dtype)
        self.position = (self.position + e) % self.capacity
        self.size = min(self.size + e, self.capacity)

    def sample(self, n: int, generators: Sequence[torch.Generator]) -> Batch:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = torch.stack([torch.randint(self.size, (n,), generator=g) for g in generators])
        return Batch(*(getattr(self, name)[self._rows, idx] for name in self.FIELDS))

    def state_tensors(self) -> dict[str, Tensor]:
        out = {f"buffer.{name}": getattr(self, name)[:, : self.size] for name in self.FIELDS}
        out["buffer.position"] = torch.tensor([self.position, self.size, self.capacity])
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        position, size, capacity = tensors["buffer.position"].tolist()
        if capacity != self.capacity:
            raise ValueError(f"checkpoint replay buffer has capacity {capacity}, this run {self.capacity}")
        for name in self.FIELDS:
            getattr(self, name)[:, :size] = tensors[f"buffer.{name}"]
        self.position, self.size = position, size
