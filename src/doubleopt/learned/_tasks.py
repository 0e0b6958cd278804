r"""Optimizee tasks for meta-training and evaluating learned optimizers.

A :class:`Task` wraps a core :class:`~doubleopt.Problem` with what an optimizee *trajectory* needs:

* :meth:`Task.reset` draws ``B`` new optimizee instances (their fixed data, if any) and starting points
  :math:`\theta_0`;
* :meth:`Task.train_batch` draws the context used for the gradient at one optimizee step (a fresh
  minibatch for the MLP classifier; the fixed quadratic for quadratics);
* :meth:`Task.eval_batch` draws an independent *held-out* context on which the meta-objective
  :math:`\sum_t w_t f(\theta_t)` is evaluated (for minibatched tasks a different minibatch than the one
  the optimizer saw; for deterministic tasks the same objective).

Two tasks reproduce Andrychowicz et al. (2016): :class:`DigitsMLPTask` (the core zoo's
:class:`~doubleopt.problems.MLPClassifier` on scikit-learn digits: one hidden layer of 20 sigmoid units,
minibatches of 128) and :class:`QuadraticTask` (random 10-d quadratics :math:`\|W\theta - y\|^2`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._problem import ProblemFamily, batch_size
from .._tree import tree_index
from ..problems import (
    ClassificationContext,
    MixtureLogisticRegression,
    MixtureMLPClassifier,
    MixtureRobustRegression,
    MLPClassifier,
)
from ..problems._data import sample_rows


@dataclass
class LeastSquaresContext:
    """Contexts of :class:`QuadraticRegression` (a batch, one row per instance).

    Attributes:
        W: ``(B, m, n)`` the matrices.
        y: ``(B, m)`` the targets.
    """

    W: Tensor  # (B, m, n)
    y: Tensor  # (B, m)


class QuadraticRegression(ProblemFamily):
    r"""Random quadratics :math:`f(\theta; W, y) = \|W\theta - y\|_2^2` (Andrychowicz et al. 2016, Sec. 3.1).

    ``W`` and ``y`` have i.i.d. standard normal entries; :math:`\nabla f = 2 W^\top (W\theta - y)`.

    Example:
        >>> import torch, doubleopt as do
        >>> fam = do.learned.QuadraticRegression(dim=10)
        >>> x = fam.sample(4, seed=0)
        >>> sol = do.solve(fam, do.LBFGS(), x, max_steps=200, tol=1e-4)
        >>> bool((sol.value < 1e-6).all())
        True
    """

    def __init__(self, dim: int = 10, n_rows: int | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim, self.n_rows, self.dtype = dim, n_rows or dim, dtype

    def _sample(self, batch_size, generator):
        W = torch.randn(batch_size, self.n_rows, self.dim, generator=generator, dtype=torch.float64)
        y = torch.randn(batch_size, self.n_rows, generator=generator, dtype=torch.float64)
        return LeastSquaresContext(W.to(self.dtype), y.to(self.dtype))

    def objective(self, theta, x):
        r = (x.W @ theta[..., None])[..., 0] - x.y
        return (r * r).sum(-1)

    def smooth_value_and_grad(self, theta, x):
        r = (x.W @ theta[..., None])[..., 0] - x.y
        return (r * r).sum(-1), 2.0 * (x.W.transpose(-1, -2) @ r[..., None])[..., 0]

    def check_context(self, x):
        if not isinstance(x, LeastSquaresContext):
            raise ValueError(f"QuadraticRegression expects a LeastSquaresContext, got {type(x).__name__}")
        if x.W.shape[-2:] != (self.n_rows, self.dim) or x.y.shape[-1] != self.n_rows:
            raise ValueError(
                f"QuadraticRegression(dim={self.dim}) expects W (B, {self.n_rows}, {self.dim}) and "
                f"y (B, {self.n_rows}), got {tuple(x.W.shape)} and {tuple(x.y.shape)}"
            )


class Task:
    """An optimizee task: a problem plus how trajectories draw instances, minibatches and held-out batches."""

    problem: ProblemFamily
    name: str = "task"

    def reset(self, batch_size: int, generator: torch.Generator) -> tuple[Any, Tensor]:
        """``(instance_data, theta0)`` for ``batch_size`` new optimizees."""
        raise NotImplementedError

    def train_batch(self, inst: Any, generator: torch.Generator) -> Any:
        """The context for the gradient of one optimizee step."""
        raise NotImplementedError

    def eval_batch(self, inst: Any, generator: torch.Generator) -> Any:
        """The context on which the meta-objective is evaluated."""
        raise NotImplementedError


class DigitsMLPTask(Task):
    """Train an MLP classifier on scikit-learn digits with minibatches that change every step.

    Args:
        hidden: hidden widths (the paper's task: ``(20,)``).
        activation: ``"sigmoid"`` (paper) or ``"relu"`` / ``"tanh"``.
        split: rows the optimizee trains on, ``"train"`` (meta-training) or ``"test"`` (held-out split).
        n_points: minibatch size.
        rows: if > 0, a data-size variation of the task: every optimizee of a trajectory trains on its own
            random subset of ``rows`` rows of the split (drawn at :meth:`reset`, without replacement), and its
            minibatches (and held-out batches) are drawn from that subset. A smaller data set is fitted
            faster, so a trajectory reaches the low-loss phase of training within its horizon.
            ``0`` (default): the whole split.

    Example:
        >>> import torch
        >>> task = DigitsMLPTask(rows=200)
        >>> inst, theta0 = task.reset(3, torch.Generator().manual_seed(0))
        >>> tuple(inst.shape), tuple(task.train_batch(inst, torch.Generator()).inputs.shape)
        ((3, 200), (3, 128, 64))
    """

    def __init__(
        self,
        hidden: tuple[int, ...] = (20,),
        activation: str = "sigmoid",
        split: str = "train",
        n_points: int = 128,
        dtype: torch.dtype = torch.float32,
        rows: int = 0,
    ):
        self.problem = MLPClassifier(
            hidden=tuple(hidden),
            activation=activation,
            dataset="digits",
            split=split,
            n_points=n_points,
            dtype=dtype,
        )
        n_split = self.problem.data_inputs.shape[0]
        if rows and not n_points <= rows <= n_split:
            raise ValueError(
                f"rows must be 0 or between n_points ({n_points}) and the split's {n_split} rows, got {rows}"
            )
        self.rows = int(rows)
        self.name = f"digits-mlp{'x'.join(map(str, hidden))}-{activation}-{split}" + (f"-rows{rows}" if rows else "")

    def reset(self, batch_size, generator):
        x = self.problem.sample(batch_size, generator=generator)
        theta0 = self.problem.init(x, generator=generator)
        if not self.rows:
            # no fixed per-instance data: the instance ids only carry the batch size across truncations
            return torch.arange(batch_size), theta0
        # each instance's own subset of the split: (B, rows) row indices
        return sample_rows(self.problem.data_inputs.shape[0], batch_size, self.rows, generator), theta0

    def _batch(self, inst, generator):
        if inst.dim() == 1:
            return self.problem.sample(inst.shape[0], generator=generator)
        local = sample_rows(inst.shape[1], inst.shape[0], self.problem.n_points, generator)
        idx = torch.gather(inst, 1, local)
        return ClassificationContext(self.problem.data_inputs[idx], self.problem.data_labels[idx])

    def train_batch(self, inst, generator):
        return self._batch(inst, generator)

    def eval_batch(self, inst, generator):
        return self._batch(inst, generator)


class QuadraticTask(Task):
    r"""Minimize random quadratics :math:`\|W\theta - y\|^2` (fixed per instance)
    from :math:`\theta_0 \sim N(0, I)`."""

    def __init__(self, dim: int = 10, dtype: torch.dtype = torch.float32):
        self.problem = QuadraticRegression(dim=dim, dtype=dtype)
        self.name = f"quadratic{dim}"

    def reset(self, batch_size, generator):
        x = self.problem.sample(batch_size, generator=generator)
        theta0 = torch.randn(batch_size, self.problem.dim, generator=generator, dtype=torch.float64)
        return x, theta0.to(self.problem.dtype)

    def train_batch(self, inst, generator):
        return inst

    def eval_batch(self, inst, generator):
        return inst


class ObjectiveSetTask(Task):
    r"""A fixed, finite set of objectives of one family (contexts ``x_1..x_M``), as in Li & Malik (2017).

    :meth:`reset` draws ``B`` of the objectives uniformly with replacement and random starting points
    ``problem.init(x, generator)``; the objectives are deterministic, so :meth:`train_batch` and
    :meth:`eval_batch` return the instances' own contexts.

    Args:
        problem: the family; its ``init(x, generator)`` draws starting points.
        contexts: the ``M`` objectives' contexts (batch dimension first).
        name: the task's name (checkpoints record it).

    Example:
        >>> import torch
        >>> task = li_malik_task("logistic", "train")
        >>> x, y0 = task.reset(5, torch.Generator().manual_seed(0))
        >>> task.size, tuple(x.features.shape), tuple(y0.shape)
        (90, (5, 100, 3), (5, 4))
    """

    def __init__(self, problem: ProblemFamily, contexts: Any, name: str = "objectives"):
        problem.check_context(contexts)
        self.problem, self.contexts, self.name = problem, contexts, name
        self.size = batch_size(contexts)

    def reset(self, batch_size, generator):
        idx = torch.randint(self.size, (batch_size,), generator=generator)
        x = tree_index(self.contexts, idx)
        return x, self.problem.init(x, generator=generator)

    def train_batch(self, inst, generator):
        return inst

    def eval_batch(self, inst, generator):
        return inst


LI_MALIK_FAMILIES = {
    "logistic": MixtureLogisticRegression,
    "robust": MixtureRobustRegression,
    "mlp": MixtureMLPClassifier,
}


def li_malik_task(
    family: str,
    split: str = "train",
    *,
    seed: int = 0,
    n_train: int = 90,
    n_test: int = 100,
    dtype: torch.dtype = torch.float32,
) -> ObjectiveSetTask:
    """The objectives of one of the paper's three families: ``"logistic"``, ``"robust"`` or ``"mlp"``.

    ``n_train + n_test`` objectives are drawn with one generator seeded by ``seed``; the first ``n_train`` are
    the ``"train"`` split (paper: 90), the next ``n_test`` the held-out ``"test"`` split (paper: 100): the splits
    never share an objective (changing ``n_train`` changes which objectives are held out).

    Example:
        >>> task = li_malik_task("mlp", "test")
        >>> task.size, task.problem.dim, task.name
        (100, 22, 'li-malik-mlp-test')
    """
    if family not in LI_MALIK_FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(LI_MALIK_FAMILIES)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
    problem = LI_MALIK_FAMILIES[family](dtype=dtype)
    contexts = problem.sample(n_train + n_test, seed=seed)
    idx = torch.arange(n_train) if split == "train" else torch.arange(n_train, n_train + n_test)
    return ObjectiveSetTask(problem, tree_index(contexts, idx), name=f"li-malik-{family}-{split}")


def make_task(
    name: str,
    *,
    split: str = "train",
    hidden: tuple[int, ...] = (20,),
    activation: str = "sigmoid",
    n_points: int = 128,
    rows: int = 0,
) -> Task:
    """``"digits"`` -> :class:`DigitsMLPTask`, ``"quadratic"`` -> :class:`QuadraticTask` (10-d),
    ``"li-malik-<family>"`` (``logistic``, ``robust``, ``mlp``) -> :func:`li_malik_task` of that family and
    ``split``.

    ``rows`` (digits only) is :class:`DigitsMLPTask`'s data-size variation (0: the whole split).

    Example:
        >>> make_task("li-malik-robust").name
        'li-malik-robust-train'
    """
    if name == "digits":
        return DigitsMLPTask(hidden=hidden, activation=activation, split=split, n_points=n_points, rows=rows)
    if rows:
        raise ValueError(f"rows applies to the digits task only, got rows={rows} for {name!r}")
    if name == "quadratic":
        return QuadraticTask()
    if name.startswith("li-malik-") and name[len("li-malik-") :] in LI_MALIK_FAMILIES:
        return li_malik_task(name[len("li-malik-") :], split)
    raise ValueError(f"unknown task {name!r}; choose one of {TASK_NAMES}")


TASK_NAMES = ("digits", "quadratic", *(f"li-malik-{f}" for f in LI_MALIK_FAMILIES))
