"""A Stable-Baselines3 ``VecEnv`` over :class:`~doubleopt.learned.OptimizationVectorEnv` (optional dependency).

SB3 (2.x) trains on its own ``VecEnv`` protocol (``step_async`` / ``step_wait``, ``dones`` and a list of info
dicts with ``terminal_observation``), not on ``gymnasium.vector.VectorEnv``. Wrapping each objective as a
``gymnasium.Env`` in SB3's ``DummyVecEnv`` would step the objectives one by one in Python; this thin wrapper keeps
the batched environment and only translates the return values (the list of info dicts is built for the
finished episodes only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv


class SB3VecEnv(VecEnv):
    """SB3's ``VecEnv`` protocol over a gymnasium vector environment with same-step autoreset.

    Example:
        >>> import doubleopt as do
        >>> from stable_baselines3 import PPO
        >>> env = do.learned.OptimizationEnv(do.learned.li_malik_task("logistic"), batch_size=4, horizon=16)
        >>> venv = do.learned.OptimizationVectorEnv(env).to_sb3()
        >>> model = PPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
        >>> _ = model.learn(total_timesteps=64)
    """

    def __init__(self, venv: Any):
        self.venv = venv
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    def reset(self):
        obs, _ = self.venv.reset(seed=self._seeds[0])
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async(actions)")
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = info["final_obs"][i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, reward.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.venv, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        # the sub-environments are one batched environment: the method runs once, for all of them
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
