r"""Learning tasks for resistor networks (data generated with explicit seeds or shipped by scikit-learn).

* :func:`allosteric_task` (Stern et al. 2021; Rocks et al. 2017): one source drop, prescribed voltage
  drops across ``m`` distant target edges.
* :func:`regression_task`: ``m`` outputs that are linear functions of ``n_in`` input voltages,
  :math:`T = W x` with :math:`W \ge 0` and row sums ``< 1`` (a resistor network's outputs are convex
  combinations of its imposed voltages, so only such maps are realizable).
* :func:`iris_task` (after Dillavou et al. 2022): the four Iris features as source voltages (min-max scaled
  on the training split) together with their complements ``1 - x`` (a passive network's outputs are
  combinations of its inputs with non-negative weights; the complements give it the sign flips a
  classifier needs), plus a bias source at 1 V; three output nodes, the correct class's output should sit
  at ``high`` and the others at ``low``; predicted class = the largest output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import random_network
from ._network import ResistorNetwork


@dataclass
class Task:
    """A network with training and test data (float64); ``metric(outputs, targets)`` or ``None``."""

    name: str
    network: ResistorNetwork
    x_train: np.ndarray
    t_train: np.ndarray
    x_test: np.ndarray
    t_test: np.ndarray
    metric: Any = None
    metric_name: str = ""


def allosteric_task(
    n_nodes: int = 200, n_targets: int = 3, *, mean_degree: float = 4.0, amplitude: float = 0.2, seed: int = 0
) -> Task:
    """Set the drops across ``n_targets`` random edges to random values in ``[-amplitude, amplitude]``.

    The input is a single sample: the source node at 1 V against the ground node.
    """
    net = random_network(
        n_nodes, mean_degree, n_inputs=1, n_outputs=n_targets, output_kind="edges", seed=seed
    )
    rng = np.random.default_rng(seed + 1)
    x = np.ones((1, 1))
    t = rng.uniform(-amplitude, amplitude, (1, n_targets))
    return Task("allosteric", net, x, t, x, t)


def regression_task(
    n_nodes: int = 200,
    n_inputs: int = 3,
    n_outputs: int = 2,
    *,
    n_train: int = 64,
    n_test: int = 256,
    mean_degree: float = 4.0,
    seed: int = 0,
) -> Task:
    """Multi-output linear regression ``T = W x``, ``x ~ U[0, 1]^n_in``, ``W >= 0`` with row sums 0.8."""
    net = random_network(n_nodes, mean_degree, n_inputs=n_inputs, n_outputs=n_outputs, seed=seed)
    rng = np.random.default_rng(seed + 2)
    W = rng.random((n_outputs, n_inputs))
    W = 0.8 * W / W.sum(1, keepdims=True)
    x = rng.random((n_train + n_test, n_inputs))
    t = x @ W.T
    return Task("regression", net, x[:n_train], t[:n_train], x[n_train:], t[n_train:])


def _accuracy(out: np.ndarray, t: np.ndarray) -> float:
    return float((out.argmax(1) == t.argmax(1)).mean())


def iris_task(
    n_nodes: int = 100, *, mean_degree: float = 4.0, high: float = 0.6, low: float = 0.3, seed: int = 0
) -> Task:
    """Iris classification (scikit-learn's copy; fixed 75/25 split of ``doubleopt.problems.load_dataset``)."""
    from ..problems import load_dataset

    Xtr, ytr = (a.numpy() for a in load_dataset("iris", "train"))
    Xte, yte = (a.numpy() for a in load_dataset("iris", "test"))
    lo, hi = Xtr.min(0), Xtr.max(0)

    def enc(X):
        Xs = np.clip((X.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
        return np.concatenate([Xs, 1.0 - Xs, np.ones((len(X), 1))], 1)  # complements, bias source at 1 V

    def tgt(y):
        t = np.full((len(y), 3), low)
        t[np.arange(len(y)), y] = high
        return t

    net = random_network(n_nodes, mean_degree, n_inputs=9, n_outputs=3, seed=seed)
    return Task("iris", net, enc(Xtr), tgt(ytr), enc(Xte), tgt(yte), _accuracy, "accuracy")
