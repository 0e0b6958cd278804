"""Train ``K`` actor-critic agents at once: one environment batch, one replay buffer, one update per step.

The loop (per environment step ``t``; every line is one batched computation over the ``K`` agents):

1. act: uniform random actions while ``t < learning_starts``, then the algorithm's exploratory action;
2. step the batched environment and store the transitions (the true last observation at truncation);
3. ``updates_per_step`` times: one critic update (the inner regression), and, every ``delay`` critic
   updates of an agent, one actor update (the amortized argmax) and one target update.

Agents are independent: agent ``k`` of a run of ``K`` equals the same seed trained alone. Per-agent
step sizes and delays (``sweep``) turn a hyperparameter sweep into one batched run. An agent whose
observation, reward or loss is non-finite stops (its parameters freeze) with a message naming it; the
others go on.

Example:
    >>> from doubleopt.rl import TD3, ActorUpdate, CriticUpdate, TrainConfig, ActorCriticTrainer
    >>> algo = TD3(actor=ActorUpdate(hidden=(16,), delay=2), critic=CriticUpdate(hidden=(16,)))
    >>> trainer = ActorCriticTrainer(algo, seeds=[0, 1], config=TrainConfig(total_steps=60, learning_starts=20,
    ...                              batch_size=8, eval_every=0))
    >>> trainer.run(progress=False).steps
    60
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .algorithms import ALGORITHMS, ActorCritic, Agents, uniform_per_agent
from .buffer import ReplayBuffer
from .pendulum import BatchedPendulum
from .stacked import StackedAdam, agent_generators, soft_update

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
SWEEPABLE = ("critic_lr", "actor_lr", "delay")


@dataclass(frozen=True)
class TrainConfig:
    """The run: how long, how much data, how often to learn and to evaluate."""

    total_steps: int = 20_000  # environment steps per agent (per environment)
    learning_starts: int = 1_000  # random-action steps before the first update
    batch_size: int = 256  # transitions per agent per update
    updates_per_step: int = 1  # critic updates per environment step (update-to-data ratio)
    buffer_size: int = 200_000  # replay capacity per agent
    envs_per_agent: int = 1  # environments stepped per agent
    eval_every: int = 2_000  # environment steps between evaluations on gymnasium (0: only at the end)
    eval_episodes: int = 10  # deterministic gymnasium episodes per evaluation
    eval_seed: int = 10_000  # gymnasium reset seed of evaluation episode i: eval_seed + i
    dtype: str = "float32"  # network and buffer dtype ("float32" or "float64")
    env: str = "Pendulum-v1"  # environment (the batched PyTorch pendulum; evaluation on gymnasium's)

    def __post_init__(self):
        for name in ("total_steps", "batch_size", "updates_per_step", "buffer_size", "envs_per_agent",
                     "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_starts < 0 or self.eval_every < 0:
            raise ValueError("learning_starts and eval_every must be >= 0")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.env != "Pendulum-v1":
            raise ValueError(f"unknown environment {self.env!r}; available: Pendulum-v1")


@dataclass
class Curves:
    """What the run recorded; ``(n, K)`` arrays as lists of per-agent lists."""

    episode_steps: list[int] = field(default_factory=list)  # step at which training episodes ended
    episode_returns: list[list[float]] = field(default_factory=list)  # mean over the agent's envs
    eval_steps: list[int] = field(default_factory=list)
    eval_returns: list[list[float]] = field(default_factory=list)  # mean of eval_episodes gymnasium episodes
    eval_train_seconds: list[float] = field(default_factory=list)  # training wall time (no evaluation) so far
    bellman_steps: list[int] = field(default_factory=list)
    bellman_error: list[list[float]] = field(default_factory=list)  # critic loss, mean over the last 100 steps


@dataclass
class RunResult:
    """The outcome per agent."""

    steps: int
    seeds: list[int]
    final_eval: list[float]
    status: list[str]  # "ok" or the reason the agent stopped
    clipped_actions: list[int]
    train_seconds: float
    curves: Curves


class ActorCriticTrainer:
    """``K`` agents of one algorithm trained together (see the module docstring).

    Args:
        algorithm: a :class:`~doubleopt.rl.ActorCritic` (``DDPG()``, ``TD3()``, ``SAC()``).
        seeds: one seed per agent; agent ``k`` draws everything (weights, resets, noise, minibatches) from
            generators seeded by ``seeds[k]``.
        config: the :class:`TrainConfig`.
        sweep: optional per-agent overrides, a list of ``K`` dicts with keys among ``critic_lr``,
            ``actor_lr``, ``delay`` (e.g. a timescale study as one batched run).
    """

    def __init__(
        self,
        algorithm: ActorCritic,
        seeds: Sequence[int],
        config: TrainConfig | None = None,
        sweep: Sequence[dict] | None = None,
    ):
        self.algorithm, self.config = algorithm, config or TrainConfig()
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("need at least one seed")
        k = self.agents = len(self.seeds)
        cfg = self.config
        dtype = self.dtype = _DTYPES[cfg.dtype]
        self.per_agent = _per_agent_settings(algorithm, k, sweep)
        self.learner_gens = agent_generators(self.seeds, stream=1)
        self.env_gens = agent_generators(self.seeds, stream=2)
        self.env = BatchedPendulum(k, cfg.envs_per_agent, dtype)
        self.nets: Agents = algorithm.build(self.env.obs_dim, self.env.act_dim, self.learner_gens, dtype)
        self.critic_opt = StackedAdam(list(self.nets.critic.parameters()), self.per_agent["critic_lr"], k)
        self.actor_opt = StackedAdam(list(self.nets.actor.parameters()), self.per_agent["actor_lr"], k)
        self.alpha_opt = (
            StackedAdam([self.nets.log_alpha], self.per_agent["actor_lr"], k) if self.nets.log_alpha is not None
            else None
        )
        self.buffer = ReplayBuffer(k, cfg.buffer_size, self.env.obs_dim, self.env.act_dim, dtype)
        self.obs = self.env.reset(self.env_gens)
        self.step_count = 0
        self.critic_updates = torch.zeros(k, dtype=torch.int64)
        self.alive = torch.ones(k, dtype=torch.bool)
        self.status = ["ok"] * k
        self.episode_return = torch.zeros(k, cfg.envs_per_agent, dtype=torch.float64)
        self.bellman_sum = torch.zeros(k, dtype=torch.float64)
        self.bellman_count = 0
        self.train_seconds = 0.0
        self.curves = Curves()
        self._uniform_delay = bool((self.per_agent["delay"] == self.per_agent["delay"][0]).all())

    # ---- one environment step -------------------------------------------------------------------
    def step(self) -> None:
        cfg, algo = self.config, self.algorithm
        with torch.no_grad():
            if self.step_count < cfg.learning_starts:
                action = uniform_per_agent(self.env_gens, (cfg.envs_per_agent, self.env.act_dim), self.dtype)
            else:
                action = algo.act(self.nets, self.obs, self.env_gens)
            out = self.env.step(action * self.env.max_torque)
            self._check_finite(out.next_obs, out.reward, "observation or reward")
            self.buffer.add(self.obs, action, out.reward, out.next_obs, out.terminated.to(self.dtype))
            self.episode_return += out.reward.to(torch.float64)
            self.step_count += 1
            ended = out.truncated | out.terminated
            if bool(ended.all(dim=1).any()):
                done_agents = ended.all(dim=1)
                if bool(done_agents.all()):
                    self.curves.episode_steps.append(self.step_count)
                    self.curves.episode_returns.append(self.episode_return.mean(dim=1).tolist())
                self.episode_return[ended] = 0.0
            self.obs = out.obs
        if self.step_count > cfg.learning_starts:
            for _ in range(cfg.updates_per_step):
                self.update()

    def update(self) -> None:
        """One critic update for every live agent; an actor and target update for those whose turn it is."""
        algo, nets, k = self.algorithm, self.nets, self.agents
        batch = self.buffer.sample(self.config.batch_size, self.learner_gens)
        target = algo.critic_target(nets, batch, self.learner_gens)
        critic_loss = algo.critic_loss(nets, batch, target)
        critic_params = self.critic_opt.params
        grads = torch.autograd.grad(critic_loss.sum(), critic_params)
        ok = self._check_finite(critic_loss, None, "critic loss")
        all_alive = bool(self.alive.all())
        self.critic_opt.step(grads, None if all_alive else self.alive)
        self.critic_updates += self.alive.to(torch.int64)
        self.bellman_sum += critic_loss.detach().to(torch.float64).nan_to_num(0.0)
        self.bellman_count += 1
        if self.bellman_count == 100:
            self.curves.bellman_steps.append(self.step_count)
            self.curves.bellman_error.append((self.bellman_sum / 100).tolist())
            self.bellman_sum.zero_()
            self.bellman_count = 0
        if self._uniform_delay:
            if self.critic_updates.max() % int(self.per_agent["delay"][0]) != 0:
                return
            turn = None if all_alive and ok else self.alive
        else:
            turn = (self.critic_updates % self.per_agent["delay"] == 0) & self.alive
            if not bool(turn.any()):
                return
        actor_loss, alpha_loss = algo.actor_loss(nets, batch.obs, self.learner_gens)
        actor_params = self.actor_opt.params
        loss = actor_loss.sum()
        if self.alpha_opt is not None:
            grads = torch.autograd.grad(loss + alpha_loss.sum(), actor_params + self.alpha_opt.params)
            actor_grads, alpha_grads = grads[: len(actor_params)], grads[len(actor_params) :]
        else:
            actor_grads, alpha_grads = torch.autograd.grad(loss, actor_params), None
        self._check_finite(actor_loss, alpha_loss, "actor loss")
        if turn is not None:
            turn = turn & self.alive
        self.actor_opt.step(actor_grads, turn)
        if self.alpha_opt is not None:
            self.alpha_opt.step(alpha_grads, turn)
        soft_update(nets.critic_target, nets.critic, algo.tau, turn, k)
        soft_update(nets.actor_target, nets.actor, algo.tau, turn, k)

    def _check_finite(self, a: Tensor, b: Tensor | None, what: str) -> bool:
        """Stop agents whose ``a`` (or ``b``) has a non-finite entry; True when every live agent is finite."""
        bad = ~torch.isfinite(a.reshape(self.agents, -1)).all(dim=1)
        if b is not None:
            bad |= ~torch.isfinite(b.reshape(self.agents, -1)).all(dim=1)
        newly = bad & self.alive
        if bool(newly.any()):
            for i in torch.nonzero(newly).flatten().tolist():
                self.status[i] = f"stopped at step {self.step_count}: non-finite {what}"
                import warnings

                warnings.warn(
                    f"agent {i} (seed {self.seeds[i]}) stopped at environment step {self.step_count}: "
                    f"non-finite {what}; the other agents go on",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self.alive &= ~newly
            return False
        return True

    # ---- evaluation -------------------------------------------------------------------------------
    def evaluate(self) -> list[float]:
        """Mean return of ``eval_episodes`` deterministic episodes per agent on gymnasium's environment."""
        return evaluate_gym(self.algorithm, self.nets, self.config.eval_episodes, self.config.eval_seed,
                            self.dtype)

    # ---- the run -----------------------------------------------------------------------------------
    def run(
        self,
        *,
        progress: bool = True,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 5_000,
        resume: bool = False,
        callback: Callable[[ActorCriticTrainer], None] | None = None,
    ) -> RunResult:
        """Step until ``total_steps``; evaluate every ``eval_every`` steps and at the end.

        With ``checkpoint``, the whole state (networks, optimizers, replay buffer, environments,
        generators, curves) is written atomically every ``checkpoint_every`` steps and at the end;
        ``resume=True`` continues from it and ends exactly where the uninterrupted run ends.
        """
        cfg = self.config
        if resume and checkpoint is not None and Path(checkpoint).exists():
            load_checkpoint(self, checkpoint)
        bar = _progress_bar(progress, cfg.total_steps, self.step_count, f"train[{self.algorithm.name} x{self.agents}]")
        try:
            while self.step_count < cfg.total_steps:
                start = time.perf_counter()
                self.step()
                self.train_seconds += time.perf_counter() - start
                t = self.step_count
                if (cfg.eval_every and t % cfg.eval_every == 0) or t == cfg.total_steps:
                    self.curves.eval_steps.append(t)
                    self.curves.eval_returns.append(self.evaluate())
                    self.curves.eval_train_seconds.append(self.train_seconds)
                if checkpoint is not None and (t % checkpoint_every == 0 or t == cfg.total_steps):
                    save_checkpoint(self, checkpoint)
                if bar is not None:
                    bar.update(1)
                    if self.curves.episode_returns and t % 200 == 0:
                        rets = self.curves.episode_returns[-1]
                        bar.set_postfix(episodic_return=f"{sum(rets) / len(rets):.0f}", alive=int(self.alive.sum()),
                                        refresh=False)
                if callback is not None:
                    callback(self)
        finally:
            if bar is not None:
                bar.close()
        return self.result()

    def result(self) -> RunResult:
        final = self.curves.eval_returns[-1] if self.curves.eval_returns else [math.nan] * self.agents
        return RunResult(self.step_count, self.seeds, final, list(self.status),
                         self.env.clipped_actions.tolist(), self.train_seconds, self.curves)

    # ---- checkpoint state --------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        out = {f"nets.{k}": v for k, v in self.nets.state_dict().items()}
        out.update(self.critic_opt.state_tensors("critic_opt"))
        out.update(self.actor_opt.state_tensors("actor_opt"))
        if self.alpha_opt is not None:
            out.update(self.alpha_opt.state_tensors("alpha_opt"))
        out.update(self.buffer.state_tensors())
        out.update({
            "env.theta": self.env.theta, "env.theta_dot": self.env.theta_dot, "env.elapsed": self.env.elapsed,
            "env.clipped_actions": self.env.clipped_actions, "obs": self.obs,
            "critic_updates": self.critic_updates, "alive": self.alive.to(torch.uint8),
            "episode_return": self.episode_return, "bellman_sum": self.bellman_sum,
        })
        for name, gens in (("learner_gen", self.learner_gens), ("env_gen", self.env_gens)):
            out[name] = torch.stack([g.get_state() for g in gens])
        return {k: v.detach().contiguous().clone() for k, v in out.items()}

    def metadata(self) -> dict[str, str]:
        return {
            "algorithm": self.algorithm.name,
            "algorithm_config": json.dumps(_algo_config(self.algorithm)),
            "train_config": json.dumps(asdict(self.config)),
            "seeds": json.dumps(self.seeds),
            "step_count": str(self.step_count),
            "bellman_count": str(self.bellman_count),
            "train_seconds": repr(self.train_seconds),
            "status": json.dumps(self.status),
            "curves": json.dumps(asdict(self.curves)),
        }


def _per_agent_settings(algorithm: ActorCritic, k: int, sweep: Sequence[dict] | None) -> dict[str, Tensor]:
    base = {"critic_lr": algorithm.critic.lr, "actor_lr": algorithm.actor.lr, "delay": algorithm.actor.delay}
    if sweep is None:
        sweep = [{}] * k
    if len(sweep) != k:
        raise ValueError(f"sweep has {len(sweep)} entries for {k} agents")
    rows = []
    for i, over in enumerate(sweep):
        unknown = set(over) - set(SWEEPABLE)
        if unknown:
            raise ValueError(f"sweep entry {i}: unknown key(s) {sorted(unknown)}; per-agent keys are {SWEEPABLE}")
        row = {**base, **over}
        if not (row["critic_lr"] > 0 and row["actor_lr"] > 0 and math.isfinite(row["critic_lr"] + row["actor_lr"])):
            raise ValueError(f"sweep entry {i}: step sizes must be positive and finite, got {row}")
        if int(row["delay"]) != row["delay"] or row["delay"] < 1:
            raise ValueError(f"sweep entry {i}: delay must be an integer >= 1, got {row['delay']}")
        rows.append(row)
    return {
        "critic_lr": torch.tensor([r["critic_lr"] for r in rows], dtype=torch.float64),
        "actor_lr": torch.tensor([r["actor_lr"] for r in rows], dtype=torch.float64),
        "delay": torch.tensor([int(r["delay"]) for r in rows], dtype=torch.int64),
    }


def _algo_config(algorithm: ActorCritic) -> dict:
    return {"name": algorithm.name, **json.loads(json.dumps(asdict(algorithm), default=list))}


def _progress_bar(progress: bool, total: int, initial: int, desc: str):
    if not progress:
        return None
    from .._progress import progress_bar

    return progress_bar(total, desc, initial=initial)


def evaluate_gym(algorithm: ActorCritic, nets: Agents, episodes: int = 10, seed: int = 10_000,
                 dtype: torch.dtype = torch.float32) -> list[float]:
    """Mean undiscounted return of ``episodes`` greedy episodes per agent on ``gymnasium``'s ``Pendulum-v1``.

    Episode ``i`` of every agent starts from ``env.reset(seed=seed + i)``; all ``K x episodes`` environments
    advance in lockstep with one batched policy evaluation per step.
    """
    import gymnasium as gym
    import numpy as np

    k = nets.agents
    envs = [gym.make("Pendulum-v1") for _ in range(k * episodes)]
    obs = np.stack([e.reset(seed=seed + (i % episodes))[0] for i, e in enumerate(envs)])
    returns = np.zeros(k * episodes)
    done = np.zeros(k * episodes, dtype=bool)
    max_torque = float(envs[0].action_space.high[0])
    while not done.all():
        with torch.no_grad():
            o = torch.as_tensor(obs, dtype=dtype).view(k, episodes, -1)
            act = (algorithm.act(nets, o, None) * max_torque).reshape(k * episodes, -1).to(torch.float64).numpy()
        for i, e in enumerate(envs):
            if done[i]:
                continue
            o_i, r, term, trunc, _ = e.step(act[i].astype(np.float32))
            obs[i] = o_i
            returns[i] += r
            done[i] = term or trunc
    return returns.reshape(k, episodes).mean(axis=1).tolist()


# ---- checkpoints ---------------------------------------------------------------------------------------
def save_checkpoint(trainer: ActorCriticTrainer, path: str | os.PathLike) -> Path:
    """Write the trainer's whole state as safetensors, atomically (temp file + rename)."""
    from ..learned._base import atomic_save

    path = Path(path)
    atomic_save(trainer.state_tensors(), path, trainer.metadata())
    return path


def load_checkpoint(trainer: ActorCriticTrainer, path: str | os.PathLike) -> None:
    """Restore a checkpoint written by :func:`save_checkpoint` into a trainer built with the same settings.

    Raises ``ValueError`` naming the difference: another algorithm, another number of agents or seeds,
    another network shape (the mismatched tensor is named), another training configuration.
    """
    from ..learned._base import read_safetensors

    meta, tensors = read_safetensors(path, "checkpoint")
    if meta.get("algorithm") != trainer.algorithm.name:
        raise ValueError(
            f"checkpoint {path} was written by algorithm {meta.get('algorithm')!r}, this run is "
            f"{trainer.algorithm.name!r}"
        )
    if json.loads(meta["seeds"]) != trainer.seeds:
        raise ValueError(f"checkpoint {path} has seeds {json.loads(meta['seeds'])}, this run {trainer.seeds}")
    own = trainer.state_tensors()
    for name, t in own.items():
        if name.startswith("buffer.") and name != "buffer.position":
            continue  # stored up to the filled size
        if name not in tensors:
            raise ValueError(f"checkpoint {path}: tensor {name!r} (shape {tuple(t.shape)}) is missing")
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise ValueError(
                f"checkpoint {path}: tensor {name!r} has shape {tuple(tensors[name].shape)} in the file but "
                f"{tuple(t.shape)} in this run (another network size, number of agents or algorithm?)"
            )
    extra = sorted(set(tensors) - set(own))
    if extra:
        raise ValueError(f"checkpoint {path}: unexpected tensor {extra[0]!r} ({len(extra)} in all)")
    saved_cfg = json.loads(meta["train_config"])
    if saved_cfg != asdict(trainer.config):
        diff = sorted(k for k in saved_cfg if saved_cfg[k] != asdict(trainer.config).get(k))
        raise ValueError(f"checkpoint {path} was written with another training configuration ({', '.join(diff)})")
    trainer.nets.load_state_dict({k[len("nets."):]: v for k, v in tensors.items() if k.startswith("nets.")})
    trainer.critic_opt.load_state_tensors(tensors, "critic_opt")
    trainer.actor_opt.load_state_tensors(tensors, "actor_opt")
    if trainer.alpha_opt is not None:
        trainer.alpha_opt.load_state_tensors(tensors, "alpha_opt")
    trainer.buffer.load_state_tensors(tensors)
    env = trainer.env
    env.theta, env.theta_dot = tensors["env.theta"].clone(), tensors["env.theta_dot"].clone()
    env.elapsed, env.clipped_actions = tensors["env.elapsed"].clone(), tensors["env.clipped_actions"].clone()
    trainer.obs = tensors["obs"].clone()
    trainer.critic_updates = tensors["critic_updates"].clone()
    trainer.alive = tensors["alive"].bool()
    trainer.episode_return = tensors["episode_return"].clone()
    trainer.bellman_sum = tensors["bellman_sum"].clone()
    for name, gens in (("learner_gen", trainer.learner_gens), ("env_gen", trainer.env_gens)):
        for g, state in zip(gens, tensors[name]):
            g.set_state(state.clone())
    trainer.step_count = int(meta["step_count"])
    trainer.bellman_count = int(meta["bellman_count"])
    trainer.train_seconds = float(meta["train_seconds"])
    trainer.status = json.loads(meta["status"])
    trainer.curves = Curves(**json.loads(meta["curves"]))


def algorithm_from_name(name: str, **kwargs) -> ActorCritic:
    """The algorithm ``name`` (a key of :data:`~doubleopt.rl.ALGORITHMS`: ``"ddpg"``, ``"td3"``, ``"sac"``)
    configured with ``kwargs``; an unknown name raises a ``ValueError`` listing the available ones.

    Example:
        >>> from doubleopt.rl import algorithm_from_name
        >>> algorithm_from_name("td3").name
        'td3'
    """
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name](**kwargs)
