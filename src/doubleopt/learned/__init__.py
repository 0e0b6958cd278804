"""Learned optimizers (issue 4): coordinatewise LSTM and per-parameter MLP update rules, meta-training by
truncated backpropagation through time, antithetic ES and PES, a ``torch.optim`` adapter and shipped weights.

A learned optimizer is an ``nn.Module`` whose :meth:`~LearnedOptimizer.as_solver` returns a solver that
:func:`doubleopt.solve` runs like any other (DESIGN principle 7).
"""

from ._base import LearnedOptimizer, LearnedSolver
from ._lstm import LSTMOptimizer, LSTMState, preprocess_gradient
from ._mlp import MLPOptimizer, MLPOptState
from ._pretrained import PRETRAINED, load_pretrained
from ._tasks import DigitsMLPTask, LeastSquaresContext, QuadraticRegression, QuadraticTask, Task, make_task
from ._torch_optim import TorchOptimizer
from .meta import MetaConfig, MetaTrainer, meta_train, rollout

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
    "TorchOptimizer",
    "load_pretrained",
    "PRETRAINED",
    "MetaConfig",
    "MetaTrainer",
    "meta_train",
    "rollout",
]
