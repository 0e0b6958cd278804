"""Actor-critic reinforcement learning as two coupled optimizations (``doubleopt.rl``).

The critic solves a regression onto bootstrapped targets (the inner, fast problem); the actor is an
amortized argmax of the critic (the outer problem). DDPG, TD3 and SAC declare the two updates and their
coupling (step sizes, critic updates per actor update, target smoothing, entropy temperature); ``K``
agents (seeds or a hyperparameter sweep) train as one batched computation on a batched PyTorch
pendulum, evaluated on gymnasium's ``Pendulum-v1``.

Example:
    >>> import doubleopt as do
    >>> algo = do.rl.TD3(actor=do.rl.ActorUpdate(hidden=(32,), delay=2), critic=do.rl.CriticUpdate(hidden=(32,)))
    >>> cfg = do.rl.TrainConfig(total_steps=50, learning_starts=10, batch_size=16, eval_every=0, eval_episodes=1)
    >>> result = do.rl.ActorCriticTrainer(algo, seeds=[0, 1, 2], config=cfg).run(progress=False)
    >>> len(result.final_eval), result.status
    (3, ['ok', 'ok', 'ok'])
"""

from .algorithms import ALGORITHMS, DDPG, SAC, TD3, ActorCritic, ActorUpdate, Agents, CriticUpdate
from .buffer import Batch, ReplayBuffer
from .pendulum import BatchedPendulum, EnvStep
from .presets import PRESETS, preset, with_overrides
from .stacked import StackedAdam, StackedMLP, agent_generators, soft_update
from .train import (
    ActorCriticTrainer,
    Curves,
    RunResult,
    TrainConfig,
    algorithm_from_name,
    evaluate_gym,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "ALGORITHMS", "DDPG", "TD3", "SAC", "ActorCritic", "ActorUpdate", "CriticUpdate", "Agents",
    "Batch", "ReplayBuffer", "BatchedPendulum", "EnvStep", "StackedAdam", "StackedMLP", "agent_generators",
    "soft_update", "ActorCriticTrainer", "TrainConfig", "Curves", "RunResult", "algorithm_from_name",
    "evaluate_gym", "load_checkpoint", "save_checkpoint", "PRESETS", "preset", "with_overrides",
]
