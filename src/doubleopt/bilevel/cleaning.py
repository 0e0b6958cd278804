r"""Problem 2 of bilevel optimization: data hyper-cleaning (Franceschi et al. 2017) on digits.

A fraction of the training labels is corrupted (each replaced by a different, random class). Every training
example :math:`j` gets a weight :math:`w_j = \sigma(\lambda_j) = 1 / (1 + e^{-\lambda_j}) \in (0, 1)`, and
the hyperparameters :math:`\lambda \in \mathbb{R}^N` (one per training example, unconstrained) are chosen
so that the classifier trained on the weighted data does well on a small *clean* validation set.

Inner problem (``C = 10`` classes, ``d = 64`` pixel features in [0, 1], ``y = (W, b)``, ``n = 650``):

.. math:: f(W, b; \lambda) = \frac1N \sum_{j=1}^N \sigma(\lambda_j)\, \mathrm{CE}(W^\top a_j + b,\, \tilde c_j)
   + \frac{\mu}{2} \big(\|W\|_F^2 + \|b\|^2\big),

with the (possibly corrupted) training labels :math:`\tilde c_j` and a fixed L2 weight :math:`\mu > 0`, so
that :math:`f` is strongly convex in :math:`(W, b)` (its Hessian is positive definite for every
:math:`\lambda`) and :math:`y^*(\lambda)` is unique and differentiable. Outer problem: the validation
cross-entropy

.. math:: \min_\lambda\ \frac{1}{N_{\mathrm{val}}} \sum_{k} \mathrm{CE}(W^{*\top} a^{\mathrm{val}}_k + b^*,\,
   c^{\mathrm{val}}_k).

The sigmoid keeps every weight in (0, 1) whatever step the outer optimizer takes. An example is *flagged* as
corrupted when its weight falls below a threshold (default 0.5, i.e. :math:`\lambda_j < 0`);
:func:`cleaning_report` gives the precision, recall and F1 of the flags against the true corruption mask, and
the test accuracy of the classifier. Data: scikit-learn's digits (shipped with it, nothing downloaded);
training and validation examples come from digits' train split, test examples from its test split.

Settings that find the corrupted examples at 30% corruption (F1 0.92-0.93 over seeds 0-2, float64):
``n_train=1000, n_val=300``, ``l2=1e-2``, ``lam = 0`` at the start, 100 outer Adam steps of learning rate 0.1
with ``do.Implicit()`` (CG) and ``do.LBFGS()`` inner solves under ``ToleranceSchedule(1e-4, 1e-7, 0.9)``.
A smaller validation set flags more clean examples (``n_val=100``: F1 0.84-0.87); ``l2=1e-3`` or ``1e-4``
lets the classifier fit the corrupted labels and the weights separate less well (F1 0.86 and 0.79).
:func:`doubleopt.bilevel.optimize` returns the inner solution *before* its last update; solve once more at the
final ``lam`` for the classifier that :func:`cleaning_report` scores.

Reference: Franceschi, Donini, Frasconi & Pontil, "Forward and reverse gradient-based hyperparameter
optimization", ICML 2017 (data hyper-cleaning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..problems._data import load_dataset
from .digits import N_CLASSES, N_FEATURES, DigitsClassifier, DigitsContext

DEFAULT_THRESHOLD = 0.5  # an example is flagged as corrupted when its weight sigma(lambda_j) < this


def corrupt_labels(
    labels: Tensor, fraction: float, *, n_classes: int = N_CLASSES, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Replace ``round(fraction * N)`` labels, chosen uniformly without replacement, by a *different* class.

    The new class of a corrupted example is ``(c + k) mod n_classes`` with ``k`` uniform in
    ``{1, ..., n_classes - 1}``, so it is uniform over the other classes and never equals the old one.

    Args:
        labels: ``(N,)`` integer class labels in ``[0, n_classes)``.
        fraction: share of labels to corrupt, in ``[0, 1)``.
        n_classes: number of classes (>= 2).
        generator: the source of randomness (same seed, same corruption).

    Returns:
        ``(corrupted_labels, mask)``: the new ``(N,)`` labels and the ``(N,)`` bool mask of changed ones.

    Example:
        >>> import torch
        >>> from doubleopt.bilevel.cleaning import corrupt_labels
        >>> t = torch.arange(10) % 3
        >>> new, mask = corrupt_labels(t, 0.3, n_classes=3, generator=torch.Generator().manual_seed(0))
        >>> int(mask.sum()), bool((new[mask] != t[mask]).all()), bool((new[~mask] == t[~mask]).all())
        (3, True, True)
    """
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be a 1-d integer tensor, got {getattr(labels, 'shape', type(labels))}")
    if not (isinstance(n_classes, int) and n_classes >= 2):
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(
            f"labels must lie in [0, {n_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    fraction = float(fraction)
    if not (0.0 <= fraction < 1.0):
        raise ValueError(f"fraction (the share of corrupted labels) must be in [0, 1), got {fraction}")
    N = labels.shape[0]
    k = int(round(fraction * N))
    idx = torch.randperm(N, generator=generator)[:k]
    shift = torch.randint(1, n_classes, (k,), generator=generator)
    new = labels.clone()
    new[idx] = (labels[idx] + shift) % n_classes
    mask = torch.zeros(N, dtype=torch.bool)
    mask[idx] = True
    return new, mask


@dataclass
class CleaningData:
    """The data of a hyper-cleaning run (contexts have batch size 1, see :class:`DigitsContext`)."""

    train: DigitsContext  # N training examples, with the corrupted labels
    val: DigitsContext  # clean validation examples (the outer loss)
    test: DigitsContext  # clean held-out examples (test accuracy only)
    corrupted: Tensor  # (N,) bool: which training labels were changed
    clean_labels: Tensor  # (N,) int64: the training labels before corruption


def cleaning_split(
    n_train: int = 1000,
    n_val: int = 200,
    *,
    corruption: float = 0.3,
    n_test: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> CleaningData:
    """Corrupted training, clean validation and clean test sets from scikit-learn's digits.

    Training and validation examples are disjoint random subsets of digits' train split (1348 images);
    the test examples are the first ``n_test`` of a random permutation of its test split (449 images;
    default: all of them). A ``round(corruption * n_train)`` of the training labels are corrupted with
    :func:`corrupt_labels`. Everything is seeded by ``seed``.

    Example:
        >>> from doubleopt.bilevel.cleaning import cleaning_split
        >>> data = cleaning_split(100, 50, corruption=0.3, n_test=40)
        >>> data.train.features.shape, int(data.corrupted.sum()), data.test.onehot.shape
        (torch.Size([1, 100, 64]), 30, torch.Size([1, 40, 10]))
    """
    X, t = load_dataset("digits", "train", dtype=dtype)
    Xte, tte = load_dataset("digits", "test", dtype=dtype)
    for name, v in (("n_train", n_train), ("n_val", n_val)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if n_train + n_val > X.shape[0]:
        raise ValueError(f"n_train + n_val must be <= {X.shape[0]} (the digits train split), got {n_train} + {n_val}")
    n_test = Xte.shape[0] if n_test is None else n_test
    if isinstance(n_test, bool) or not isinstance(n_test, int) or not (1 <= n_test <= Xte.shape[0]):
        raise ValueError(f"n_test must be an integer in [1, {Xte.shape[0]}] (the digits test split), got {n_test!r}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(X.shape[0], generator=g)
    tr, va = perm[:n_train], perm[n_train : n_train + n_val]
    te = torch.randperm(Xte.shape[0], generator=g)[:n_test]
    noisy, mask = corrupt_labels(t[tr], corruption, n_classes=N_CLASSES, generator=g)

    def ctx(features, labels):
        return DigitsContext(features[None], F.one_hot(labels, N_CLASSES).to(dtype)[None])

    return CleaningData(ctx(X[tr], noisy), ctx(X[va], t[va]), ctx(Xte[te], tte[te]), mask, t[tr].clone())


class HyperCleaning(DigitsClassifier):
    r"""Weighted multinomial logistic regression, one weight :math:`\sigma(\lambda_j)` per training example.

    See the module docstring for the objective. ``lam`` (shape ``(n_train,)``) is the ``nn.Parameter`` of
    hyperparameters; :meth:`weights` returns :math:`\sigma(\lambda)`.

    Args:
        n_train: number of training examples ``N`` (the context must hold exactly that many).
        l2: the fixed L2 weight :math:`\mu > 0` on ``W`` and ``b`` (makes the Hessian positive definite).
        init: initial value of every :math:`\lambda_j` (0: every weight 0.5).
        dtype: dtype of the hyperparameters.

    Example:
        >>> import torch, doubleopt as do
        >>> from doubleopt.bilevel.cleaning import HyperCleaning, cleaning_split
        >>> data = cleaning_split(100, 50, corruption=0.3)
        >>> prob = HyperCleaning(100)
        >>> sol = do.solve(prob, do.LBFGS(), data.train, tol=1e-8, max_steps=500)
        >>> prob.cross_entropy(sol.y, data.val).backward()
        >>> prob.lam.grad.shape
        torch.Size([100])
    """

    def __init__(self, n_train: int, *, l2: float = 1e-2, init: float = 0.0, dtype: torch.dtype = torch.float64):
        super().__init__()
        if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 1:
            raise ValueError(f"n_train must be an integer >= 1, got {n_train!r}")
        if not (math.isfinite(float(l2)) and float(l2) > 0):
            raise ValueError(f"l2 must be finite and > 0 (it keeps the inner Hessian positive definite), got {l2!r}")
        if not math.isfinite(float(init)):
            raise ValueError(f"init must be finite, got {init!r}")
        self.n_train, self.l2 = n_train, float(l2)
        self.lam = nn.Parameter(torch.full((n_train,), float(init), dtype=dtype))

    def weights(self) -> Tensor:
        r"""The example weights :math:`\sigma(\lambda)`, shape ``(n_train,)``."""
        return torch.sigmoid(self.lam)


    def objective(self, y: Tensor, x: DigitsContext) -> Tensor:
        ce = -(torch.log_softmax(self.logits(y, x), -1) * x.onehot).sum(-1)  # (B, N)
        data = (ce * self.weights()).mean(-1)
        return data + 0.5 * self.l2 * (y * y).sum(-1)

    def check_context(self, x):
        if not isinstance(x, DigitsContext):
            raise ValueError(f"HyperCleaning expects a DigitsContext (see cleaning_split), got {type(x).__name__}")
        if x.features.dim() != 3 or tuple(x.features.shape[1:]) != (self.n_train, N_FEATURES):
            raise ValueError(
                f"features must have shape (B, {self.n_train}, {N_FEATURES}) (n_train = {self.n_train}), "
                f"got {tuple(x.features.shape)}"
            )


@dataclass
class CleaningReport:
    """How well the weights find the corrupted examples, and how good the classifier is."""

    precision: float  # flagged and corrupted / flagged (0 when nothing is flagged)
    recall: float  # flagged and corrupted / corrupted (0 when nothing is corrupted)
    f1: float  # 2 P R / (P + R) (0 when P + R = 0)
    test_accuracy: float  # of the classifier y on the test set
    n_flagged: int
    n_corrupted: int
    threshold: float  # flag: weight sigma(lambda_j) < threshold


def detection_scores(flagged: Tensor, corrupted: Tensor) -> tuple[float, float, float]:
    """Precision, recall and F1 of the bool ``flagged`` against the bool ``corrupted`` (same shape).

    Conventions: precision is 0 when nothing is flagged, recall is 0 when nothing is corrupted, F1 is 0 when
    precision + recall is 0.

    Example:
        >>> import torch
        >>> from doubleopt.bilevel.cleaning import detection_scores
        >>> detection_scores(torch.tensor([True, True, False, False]), torch.tensor([True, False, True, False]))
        (0.5, 0.5, 0.5)
    """
    if flagged.shape != corrupted.shape or flagged.dtype != torch.bool or corrupted.dtype != torch.bool:
        raise ValueError(
            f"flagged and corrupted must be bool tensors of one shape, got {flagged.dtype} {tuple(flagged.shape)} "
            f"and {corrupted.dtype} {tuple(corrupted.shape)}"
        )
    tp = int((flagged & corrupted).sum())
    n_flag, n_bad = int(flagged.sum()), int(corrupted.sum())
    precision = tp / n_flag if n_flag else 0.0
    recall = tp / n_bad if n_bad else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def cleaning_report(
    problem: HyperCleaning, y: Tensor, data: CleaningData, *, threshold: float = DEFAULT_THRESHOLD
) -> CleaningReport:
    """Flag the training examples whose weight is below ``threshold`` and score the flags and the classifier.

    Args:
        problem: the :class:`HyperCleaning` problem (its current ``lam``).
        y: a classifier ``(1, 650)``, e.g. the inner solution at the current ``lam``.
        data: the :class:`CleaningData` (``corrupted`` mask and test set).
        threshold: in (0, 1); default 0.5 (flag iff :math:`\\lambda_j < 0`).
    """
    if not (0.0 < float(threshold) < 1.0):
        raise ValueError(f"threshold must be in (0, 1) (weights are sigmoid(lambda)), got {threshold!r}")
    if data.corrupted.shape != (problem.n_train,):
        raise ValueError(f"data.corrupted must have shape ({problem.n_train},), got {tuple(data.corrupted.shape)}")
    with torch.no_grad():
        flagged = problem.weights() < threshold
    precision, recall, f1 = detection_scores(flagged, data.corrupted)
    return CleaningReport(
        precision,
        recall,
        f1,
        problem.accuracy(y, data.test),
        int(flagged.sum()),
        int(data.corrupted.sum()),
        float(threshold),
    )
