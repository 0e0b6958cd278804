"""Learned optimizers: coordinatewise LSTM and per-parameter MLP update rules, meta-training by
truncated backpropagation through time, antithetic ES and PES, a ``torch.optim`` adapter and shipped weights;
the optimizer as a policy (Li & Malik): :class:`PolicyOptimizer`, the optimization MDP as a batched
environment (:class:`OptimizationEnv`) and its ``gymnasium`` adapter, the paper's tasks (:func:`li_malik_task`).

A learned optimizer is an ``nn.Module`` whose :meth:`~LearnedOptimizer.as_solver` returns a solver that
:func:`doubleopt.solve` runs like any other.
"""

from ._base import LearnedOptimizer, LearnedSolver
from ._lstm import LSTMOptimizer, LSTMState, preprocess_gradient
from ._mlp import MLPOptimizer, MLPOptState
from ._pretrained import PRETRAINED, load_pretrained
from ._tasks import (
    DigitsMLPTask,
    LeastSquaresContext,
    ObjectiveSetTask,
    QuadraticRegression,
    QuadraticTask,
    Task,
    li_malik_task,
    make_task,
)
from ._torch_optim import TorchOptimizer
from .gps import GPS, GPSState  # registers "gps"
from .mdp import EnvState, OptimizationEnv, OptimizationVectorEnv
from .meta import MetaConfig, MetaTrainer, meta_train, rollout
from .policy import PolicyFeatures, PolicyOptimizer, PolicySolver, PolicyState
from .ppo import PPO, PPOState  # registers "ppo"

__all__ = [
    "LearnedOptimizer",
    "LearnedSolver",
    "LSTMOptimizer",
    "LSTMState",
    "preprocess_gradient",
    "MLPOptimizer",
    "MLPOptState",
    "Task",
    "DigitsMLPTask",
    "QuadraticTask",
    "QuadraticRegression",
    "LeastSquaresContext",
    "make_task",
    "ObjectiveSetTask",
    "li_malik_task",
    "PolicyOptimizer",
    "PolicySolver",
    "PolicyState",
    "GPS",
    "GPSState",
    "PolicyFeatures",
    "PPO",
    "PPOState",
    "OptimizationEnv",
    "OptimizationVectorEnv",
    "EnvState",
    "TorchOptimizer",
    "load_pretrained",
    "PRETRAINED",
    "MetaConfig",
    "MetaTrainer",
    "meta_train",
    "rollout",
]
