r"""Problem 1 of bilevel optimization: L2-weight selection for multinomial logistic regression on digits.

Inner problem (``C = 10`` classes, ``d = 64`` pixel features scaled to [0, 1], ``y = (W, b)``):

.. math:: f(W, b; \lambda) = \frac1N \sum_{j=1}^N \mathrm{CE}(W^\top a_j + b,\, c_j)
   + \frac12 \sum_{i=1}^{d} e^{\lambda_i} \sum_{c=1}^{C} W_{ic}^2,

with one log L2 weight :math:`\lambda_i` per feature (``per_feature=True``, 64 hyperparameters) or one
global weight (``per_feature=False``). The log parametrization keeps every weight :math:`e^{\lambda_i}`
positive. The outer loss is the validation cross-entropy of :math:`y^*(\lambda)`
(:meth:`DigitsL2.cross_entropy`). Data: scikit-learn's digits (shipped with it, nothing downloaded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._problem import Problem
from ..problems._data import load_dataset

N_FEATURES, N_CLASSES = 64, 10


@dataclass
class DigitsContext:
    """A labelled set of digits (see :func:`digits_split`; batch size 1).

    Attributes:
        features: ``(B, N, 64)`` the images' pixels.
        onehot: ``(B, N, 10)`` one-hot labels (float, so that the context has one dtype).
    """

    features: Tensor  # (B, N, 64)
    onehot: Tensor  # (B, N, 10) one-hot labels (float, so that the context is one dtype)


def digits_split(
    n_train: int, n_val: int, *, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[DigitsContext, DigitsContext]:
    """Disjoint random train and validation sets from digits' train split (batch size 1 each)."""
    X, t = load_dataset("digits", "train", dtype=dtype)
    if n_train < 1 or n_val < 1 or n_train + n_val > X.shape[0]:
        raise ValueError(f"need n_train, n_val >= 1 and n_train + n_val <= {X.shape[0]}, got {n_train}, {n_val}")
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))
    onehot = F.one_hot(t, N_CLASSES).to(dtype)

    def ctx(idx):
        return DigitsContext(X[idx][None], onehot[idx][None])

    return ctx(perm[:n_train]), ctx(perm[n_train : n_train + n_val])


class DigitsClassifier(Problem):
    """Multinomial logistic regression on digits, ``y = (W, b)`` flattened: the logits, the (unweighted) mean
    cross-entropy and the accuracy that the bilevel digits problems share."""

    dim = N_FEATURES * N_CLASSES + N_CLASSES

    def logits(self, y: Tensor, x: DigitsContext) -> Tensor:
        W = y[:, : N_FEATURES * N_CLASSES].reshape(-1, N_FEATURES, N_CLASSES)
        b = y[:, N_FEATURES * N_CLASSES :]
        return x.features @ W + b[:, None, :]

    def cross_entropy(self, y: Tensor, x: DigitsContext) -> Tensor:
        """Mean cross-entropy of the classifier ``y`` on ``x`` (a scalar, averaged over the batch too)."""
        return -(torch.log_softmax(self.logits(y, x), -1) * x.onehot).sum(-1).mean()

    def accuracy(self, y: Tensor, x: DigitsContext) -> float:
        """Share of the examples of ``x`` that the classifier ``y`` labels correctly."""
        with torch.no_grad():
            return float((self.logits(y, x).argmax(-1) == x.onehot.argmax(-1)).to(torch.float64).mean())


class DigitsL2(DigitsClassifier):
    """Multinomial logistic regression with log-parametrized L2 weights (see the module docstring).

    Args:
        per_feature: one weight per pixel feature (64) or a single global weight.
        log_l2: initial value of every :math:`\\lambda_i`.
        dtype: dtype of the hyperparameters.

    Example:
        >>> import torch, doubleopt as do
        >>> train, val = do.bilevel.digits_split(200, 100)
        >>> prob = do.bilevel.DigitsL2(per_feature=True, log_l2=-3.0)
        >>> sol = do.solve(prob, do.LBFGS(), train, tol=1e-8, max_steps=500)
        >>> prob.cross_entropy(sol.y, val).backward()
        >>> prob.log_l2.grad.shape
        torch.Size([64])
    """

    def __init__(self, *, per_feature: bool = True, log_l2: float = -3.0, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.log_l2 = nn.Parameter(torch.full((N_FEATURES if per_feature else 1,), float(log_l2), dtype=dtype))

    def objective(self, y: Tensor, x: DigitsContext) -> Tensor:
        ce = -(torch.log_softmax(self.logits(y, x), -1) * x.onehot).sum(-1).mean(-1)
        W = y[:, : N_FEATURES * N_CLASSES].reshape(-1, N_FEATURES, N_CLASSES)
        penalty = 0.5 * ((W * W).sum(-1) * self.log_l2.exp()).sum(-1)
        return ce + penalty

    def check_context(self, x):
        if not isinstance(x, DigitsContext):
            raise ValueError(f"DigitsL2 expects a DigitsContext, got {type(x).__name__}")
        if x.features.dim() != 3 or x.features.shape[-1] != N_FEATURES:
            raise ValueError(f"features must have shape (B, N, {N_FEATURES}), got {tuple(x.features.shape)}")
