"""Named configurations: ``zoo`` (the RL Baselines3 Zoo's Pendulum-v1 hyperparameters) and ``fast`` (ours).

``fast`` was chosen by the small study in ``doubleopt bench actor_critic -- --study config`` (network width,
batch size and random-action steps against time to a solved pendulum, 5 seeds batched); see ``docs/rl.md``.
"""

from __future__ import annotations

from dataclasses import replace

from .algorithms import ALGORITHMS, ActorCritic, ActorUpdate, CriticUpdate
from .train import TrainConfig

PRESETS = ("fast", "zoo")
"""The preset names :func:`preset` accepts."""


def preset(name: str, algorithm: str) -> tuple[ActorCritic, TrainConfig]:
    """The algorithm and training configuration of preset ``name`` for ``algorithm`` (ddpg, td3, sac).

    Example:
        >>> algo, cfg = preset("zoo", "td3")
        >>> algo.actor.hidden, cfg.learning_starts, algo.gamma
        ((400, 300), 10000, 0.98)
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; available: {', '.join(ALGORITHMS)}")
    cls = ALGORITHMS[algorithm]
    delay = 2 if algorithm == "td3" else 1
    twin = algorithm != "ddpg"
    if name == "zoo":
        # rl-baselines3-zoo hyperparams/{td3,sac,ddpg}.yml, Pendulum-v1 (with SB3's defaults where the Zoo is silent)
        if algorithm == "sac":
            hidden, gamma, starts, buffer = (256, 256), 0.99, 100, 1_000_000
        else:
            hidden, gamma, starts, buffer = (400, 300), 0.98, 10_000, 200_000
        algo = cls(
            actor=ActorUpdate(lr=1e-3, hidden=hidden, delay=delay),
            critic=CriticUpdate(lr=1e-3, hidden=hidden, twin=twin),
            gamma=gamma,
        )
        return algo, TrainConfig(total_steps=20_000, learning_starts=starts, batch_size=256, buffer_size=buffer)
    if name == "fast":
        algo = cls(
            actor=ActorUpdate(lr=1e-3, hidden=(64, 64), delay=delay),
            critic=CriticUpdate(lr=1e-3, hidden=(64, 64), twin=twin),
            gamma=0.98,
        )
        return algo, TrainConfig(total_steps=20_000, learning_starts=1_000, batch_size=128, buffer_size=200_000)
    raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")


def with_overrides(algo: ActorCritic, cfg: TrainConfig, **over) -> tuple[ActorCritic, TrainConfig]:
    """Replace fields given as not-None keywords: ``critic_lr``, ``actor_lr``, ``delay``, ``hidden``, ``gamma``,
    ``tau`` (algorithm) and any :class:`TrainConfig` field."""
    over = {k: v for k, v in over.items() if v is not None}
    critic, actor = algo.critic, algo.actor
    if "hidden" in over:
        h = tuple(over.pop("hidden"))
        critic, actor = replace(critic, hidden=h), replace(actor, hidden=h)
    if "critic_lr" in over:
        critic = replace(critic, lr=over.pop("critic_lr"))
    if "actor_lr" in over:
        actor = replace(actor, lr=over.pop("actor_lr"))
    if "delay" in over:
        actor = replace(actor, delay=over.pop("delay"))
    algo_kw = {k: over.pop(k) for k in ("gamma", "tau") if k in over}
    algo = replace(algo, critic=critic, actor=actor, **algo_kw)
    return algo, replace(cfg, **over)
