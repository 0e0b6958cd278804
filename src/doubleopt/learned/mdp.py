r"""The optimization MDP of Li & Malik (2017) as a batched environment, and a ``gymnasium`` adapter.

An optimizer run on objective :math:`f` is an episode: the state at iterate :math:`t` is the recent history
(:class:`~doubleopt.learned.policy.PolicyState`), the action is the step :math:`a_t = y_{t+1} - y_t`, the
reward is :math:`r_t = -f(y_{t+1})` (so the return is minus the sum of objective values along the run, and fast
descent is rewarded), the horizon is :math:`T` steps.

:class:`OptimizationEnv` advances ``B`` objectives of a :class:`~doubleopt.learned.Task` together, as tensors:

* ``reset(generator, mask=None) -> obs``: new objectives and starting points (all, or where ``mask``);
* ``step(action) -> (obs, reward, terminated, truncated)``.

Shapes, for the coordinatewise policy: ``obs`` is ``(B, n, F)`` (per coordinate the policy's ``F = 3H``
features, :class:`~doubleopt.learned.policy.PolicyFeatures`), ``action`` is ``(B, n)`` (the raw step),
``reward``, ``terminated`` and ``truncated`` are ``(B,)``. ``terminated`` marks a non-finite transition (iterate,
objective or gradient NaN/inf: its reward is non-finite too, and trainers skip and count it); ``truncated``
marks the horizon. The environment does not reset finished instances itself: call
``reset(generator, mask=terminated | truncated)``. The environment is not differentiable (it runs without
autograd); to differentiate a run, use :func:`doubleopt.solve` with ``do.Unroll()``.

:class:`OptimizationVectorEnv` is a :class:`gymnasium.vector.VectorEnv` over a fixed-dimension family (NumPy in
and out, the coordinates flattened, same-step autoreset) so that standard RL libraries can train on the MDP;
``.to_sb3()`` wraps it as a Stable-Baselines3 ``VecEnv`` (SB3 does not accept gymnasium vector environments).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from torch import Tensor

from .._tree import tree_where
from ._tasks import Task
from .policy import PolicyFeatures, PolicyState


@dataclass
class EnvState:
    """The ``B`` runs an :class:`OptimizationEnv` advances (batch first)."""

    inst: Any  # the task's instance data (for an ObjectiveSetTask: the objectives' contexts)
    y: Tensor  # (B, n) current iterates y_t
    history: PolicyState  # the policy's view of the last H iterates
    t: Tensor  # (B,) int64 steps taken in the current episode


def _finite_transition(y: Tensor, value: Tensor, grad: Tensor) -> Tensor:
    return torch.isfinite(y).all(-1) & torch.isfinite(value) & torch.isfinite(grad).all(-1)


class OptimizationEnv:
    r"""The optimization MDP over a task's objectives, ``B`` episodes at once (module docstring).

    Transition from :math:`y_t` with action :math:`a_t` (``(B, n)``): :math:`y_{t+1} = y_t + a_t`, evaluate
    :math:`f(y_{t+1}; x_{t+1})` and its gradient on the task's context for that step (``task.train_batch``: the
    objective itself for deterministic tasks, a fresh minibatch for stochastic ones), push them and the step
    onto the history; reward :math:`-f(y_{t+1}; x_{t+1})`.

    Args:
        task: where objectives and starting points come from (e.g.
            :func:`~doubleopt.learned.li_malik_task`).
        batch_size: ``B``, episodes advanced together.
        horizon: ``T``, steps per episode (paper: 100).
        history: ``H`` of the observed features (must match the policy's).
        eps: the features' ``eps``.

    Example:
        >>> import torch, doubleopt as do
        >>> env = do.learned.OptimizationEnv(do.learned.li_malik_task("logistic"), batch_size=8, history=25)
        >>> policy = do.learned.PolicyOptimizer(history=25)
        >>> obs = env.reset(torch.Generator().manual_seed(0))
        >>> obs.shape  # (B, n, 3H)
        torch.Size([8, 4, 75])
        >>> ret = torch.zeros(8)
        >>> for t in range(env.horizon):
        ...     action = policy.step_scale * env.grad_scale[:, None] * policy.mean(obs)
        ...     obs, reward, terminated, truncated = env.step(action)
        ...     ret += reward
        >>> bool(truncated.all()), ret.shape
        (True, torch.Size([8]))
    """

    def __init__(self, task: Task, batch_size: int, *, horizon: int = 100, history: int = 25, eps: float = 1e-12):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.task, self.batch_size, self.horizon = task, int(batch_size), int(horizon)
        self.features = PolicyFeatures(history=history, eps=eps)
        self.state: EnvState | None = None
        self.generator: torch.Generator | None = None

    @property
    def dim(self) -> int:
        """``n``, the objectives' dimension."""
        return self.task.problem.dim

    def _require_state(self) -> EnvState:
        if self.state is None:
            raise RuntimeError("call env.reset(generator) before env.step(action)")
        return self.state

    @property
    def grad_scale(self) -> Tensor:
        r"""``(B,)`` the running gradient scale :math:`s_g` (a policy's step unit is ``step_scale * grad_scale``)."""
        return self._require_state().history.grad_scale

    def observation(self) -> Tensor:
        """``(B, n, 3H)`` the policy features of the current state."""
        return self.features(self._require_state().history)

    @torch.no_grad()
    def reset(
        self,
        generator: torch.Generator,
        mask: Tensor | None = None,
        *,
        objectives: Any = None,
        y0: Tensor | None = None,
    ) -> Tensor:
        """New objectives and starting points for every instance (or only where ``mask (B,)`` is True).

        Args:
            generator: drives this reset and the later steps' randomness (minibatches of stochastic tasks).
            mask: ``(B,)`` bool, the instances to reset (default: all).
            objectives: start the episodes on these objectives (the task's instance data for ``B`` episodes,
                e.g. contexts of an :class:`~doubleopt.learned.ObjectiveSetTask`) instead of drawing them
                (repeated rollouts of one objective, evaluation on a fixed set); given with ``y0`` or not at all.
            y0: start the episodes from these iterates ``(B, n)``; given with ``objectives`` or not at all.

        Returns the observation ``(B, n, 3H)``.
        """
        B = self.batch_size
        if (objectives is None) != (y0 is None):
            raise ValueError("pass both objectives and y0, or neither (then the task draws them)")
        if objectives is None:
            inst, y0 = self.task.reset(B, generator)
        else:
            if tuple(y0.shape) != (B, self.dim):
                raise ValueError(f"y0 must have shape (B, n) = {(B, self.dim)}, got {tuple(y0.shape)}")
            inst = objectives
        value, grad = self.task.problem.value_and_grad(y0, self.task.train_batch(inst, generator))
        new = EnvState(inst, y0, self.features.init(value, grad), torch.zeros(B, dtype=torch.int64, device=y0.device))
        if mask is None or self.state is None:
            self.state = new
        else:
            if mask.shape != (B,):
                raise ValueError(f"mask must have shape ({B},), got {tuple(mask.shape)}")
            self.state = tree_where(mask.to(device=y0.device, dtype=torch.bool), new, self.state)
        self.generator = generator
        return self.observation()

    @torch.no_grad()
    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(obs (B, n, 3H), reward (B,), terminated (B,), truncated (B,))`` after the steps ``action (B, n)``."""
        s = self._require_state()
        if tuple(action.shape) != tuple(s.y.shape):
            raise ValueError(
                f"action must be the step y_(t+1) - y_t of shape (B, n) = {tuple(s.y.shape)}, got {tuple(action.shape)}"
            )
        action = action.to(dtype=s.y.dtype, device=s.y.device)
        y = s.y + action
        value, grad = self.task.problem.value_and_grad(y, self.task.train_batch(s.inst, self.generator))
        t = s.t + 1
        self.state = EnvState(s.inst, y, self.features.push(s.history, value, grad, action), t)
        terminated = ~_finite_transition(y, value, grad)
        truncated = (t >= self.horizon) & ~terminated
        return self.observation(), -value, terminated, truncated


class OptimizationVectorEnv(gymnasium.vector.VectorEnv):
    r"""A :class:`gymnasium.vector.VectorEnv` view of an :class:`OptimizationEnv` (NumPy in and out).

    Each of the ``num_envs = B`` sub-environments is one objective of a fixed-dimension family:

    * observation ``(n * 3H,)`` float32: the ``(n, 3H)`` features flattened row-major (coordinate-major);
    * action ``(n,)`` float32 in ``[-action_bound, action_bound]``: the step **in the policy's units**,
      :math:`\Delta y = \alpha s_g u` (``step_scale`` :math:`\alpha`, the running gradient scale :math:`s_g`; as
      :class:`~doubleopt.learned.PolicyOptimizer`), so that an off-the-shelf policy over scale-free observations
      can output scale-free actions;
    * reward :math:`-f(y_{t+1})` (float64); a non-finite reward is replaced by ``nonfinite_reward`` and that
      episode terminates.

    Autoreset is same-step (``metadata["autoreset_mode"]``): when an episode ends, the returned observation is
    the new episode's first one and ``info["final_obs"]`` (with mask ``info["_final_obs"]``) holds the last.

    Args:
        env: the batched environment.
        step_scale: :math:`\alpha`.
        action_bound: bound of the action box (finite: Stable-Baselines3 requires it).
        nonfinite_reward: reward of a transition to a non-finite iterate or objective.
        seed: seed of the objectives drawn until ``reset(seed=...)`` is given another.

    Example:
        >>> import numpy as np, doubleopt as do
        >>> env = do.learned.OptimizationEnv(do.learned.li_malik_task("robust"), batch_size=4, horizon=5)
        >>> venv = do.learned.OptimizationVectorEnv(env)
        >>> obs, info = venv.reset(seed=0)
        >>> obs.shape, venv.single_action_space.shape
        ((4, 300), (4,))
        >>> obs, reward, terminated, truncated, info = venv.step(np.zeros((4, 4), np.float32))
        >>> reward.shape, bool(terminated.any())
        ((4,), False)
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        env: OptimizationEnv,
        *,
        step_scale: float = 0.1,
        action_bound: float = 10.0,
        nonfinite_reward: float = -100.0,
        seed: int = 0,
    ):
        if not step_scale > 0 or not action_bound > 0:
            raise ValueError(f"step_scale and action_bound must be > 0, got {step_scale}, {action_bound}")
        if not np.isfinite(nonfinite_reward):
            raise ValueError(f"nonfinite_reward must be finite, got {nonfinite_reward}")
        self.env, self.step_scale, self.nonfinite_reward = env, float(step_scale), float(nonfinite_reward)
        self.num_envs = env.batch_size
        n, F = env.dim, env.features.size
        self.single_observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (n * F,), np.float32)
        self.single_action_space = gymnasium.spaces.Box(-action_bound, action_bound, (n,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._generator = torch.Generator().manual_seed(int(seed))

    def _obs(self, obs: Tensor) -> np.ndarray:
        return obs.reshape(self.num_envs, -1).to(torch.float32).cpu().numpy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._generator = torch.Generator().manual_seed(int(seed))
        return self._obs(self.env.reset(self._generator)), {}

    def step(self, actions):
        B, n = self.num_envs, self.env.dim
        u = np.asarray(actions)
        if u.shape != (B, n):
            raise ValueError(
                f"actions must have shape (num_envs, n) = {(B, n)} (one normalized step per coordinate), got {u.shape}"
            )
        y = self.env._require_state().y
        u = torch.as_tensor(u, dtype=y.dtype, device=y.device)
        obs, reward, terminated, truncated = self.env.step(self.step_scale * self.env.grad_scale[:, None] * u)
        reward = torch.where(torch.isfinite(reward), reward, torch.full_like(reward, self.nonfinite_reward))
        done = terminated | truncated
        info: dict[str, Any] = {}
        if bool(done.any()):
            info["final_obs"], info["_final_obs"] = self._obs(obs), done.cpu().numpy()
            obs = self.env.reset(self._generator, mask=done)
        return (
            self._obs(obs),
            reward.to(torch.float64).cpu().numpy(),
            terminated.cpu().numpy(),
            truncated.cpu().numpy(),
            info,
        )

    def to_sb3(self):
        """This environment as a Stable-Baselines3 ``VecEnv`` (needs ``stable-baselines3``)."""
        from ._sb3 import SB3VecEnv

        return SB3VecEnv(self)


__all__ = ["EnvState", "OptimizationEnv", "OptimizationVectorEnv"]
