r"""Linear-model families: ridge, L2-regularized logistic and robust (Geman-McClure) regression.

``y`` holds the weights and, last, the intercept: :math:`\hat t = X w + w_0`. Each instance's context is
its own dataset (``features (B, N, d)``, ``targets (B, N)``): synthetic, or a random subset of
scikit-learn's breast-cancer data (``dataset="breast_cancer"``, ``d = 30``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .._problem import ProblemFamily
from ._data import load_dataset, sample_rows


@dataclass
class RegressionContext:
    """Contexts of the regression families (:class:`LogisticRegression`, :class:`RidgeRegression`,
    :class:`RobustRegression`): one dataset per instance.

    Attributes:
        features: ``(B, N, d)`` the features of ``N`` points.
        targets: ``(B, N)`` their targets (labels in {0, 1} for logistic regression).
    """

    features: Tensor  # (B, N, d)
    targets: Tensor  # (B, N) (labels in {0, 1} for logistic regression)


class _LinearFamily(ProblemFamily):
    def __init__(self, n_features: int, n_points: int, l2: float, dataset: str, dtype: torch.dtype):
        super().__init__()
        if n_features < 1 or n_points < 1:
            raise ValueError(f"need n_features >= 1 and n_points >= 1, got {n_features}, {n_points}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        if dataset not in ("synthetic", "breast_cancer"):
            raise ValueError(f"dataset must be 'synthetic' or 'breast_cancer', got {dataset!r}")
        if dataset == "breast_cancer" and n_features != 30:
            raise ValueError("the breast-cancer data has n_features = 30")
        self.n_features, self.n_points, self.l2, self.dataset, self.dtype = n_features, n_points, l2, dataset, dtype
        self.dim = n_features + 1

    def linear(self, y: Tensor, x: RegressionContext) -> Tensor:
        # row-vector form w^T X^T (one batched gemv over contiguous rows of X): measurably faster on CPU than
        # X @ w for small n (see doubleopt/bench/studies/solvers.py)
        return torch.baddbmm(y[:, None, -1:], y[:, None, :-1], x.features.transpose(-1, -2))[:, 0]

    def _grad_from_residual(self, y: Tensor, x: RegressionContext, dloss: Tensor) -> Tensor:
        """Gradient of mean(loss(linear)) + l2/2 ||y||^2 given dloss/dlinear (already divided by N)."""
        gw = (dloss[:, None, :] @ x.features)[:, 0]
        return torch.cat([gw, dloss.sum(-1, keepdim=True)], dim=-1) + self.l2 * y

    def _penalty(self, y: Tensor) -> Tensor:
        return 0.5 * self.l2 * (y * y).sum(-1)

    def _sample_breast_cancer(self, batch_size, generator, binary: bool):
        X, t = load_dataset("breast_cancer", dtype=self.dtype)
        idx = sample_rows(X.shape[0], batch_size, self.n_points, generator)
        return RegressionContext(X[idx], t[idx].to(self.dtype))

    def check_context(self, x):
        if not isinstance(x, RegressionContext):
            raise ValueError(f"{type(self).__name__} expects a RegressionContext, got {type(x).__name__}")
        if x.features.dim() != 3 or x.features.shape[-1] != self.n_features:
            raise ValueError(
                f"{type(self).__name__} expects features of shape (B, N, {self.n_features}), "
                f"got {tuple(x.features.shape)}"
            )
        if x.targets.shape != x.features.shape[:2]:
            raise ValueError(f"targets must have shape {tuple(x.features.shape[:2])}, got {tuple(x.targets.shape)}")


class LogisticRegression(_LinearFamily):
    r"""L2-regularized logistic regression
    :math:`f(y) = \frac1N \sum_j \log(1 + e^{-s_j (x_j^\top w + w_0)}) + \frac{\lambda}{2}\|y\|^2`.

    Synthetic contexts: two Gaussian clusters (unit covariance) at :math:`\pm \mu u` for a random unit
    direction ``u`` per instance, ``separation = 2 mu``; labels balanced at random.

    Example:
        >>> import torch, doubleopt as do
        >>> fam = do.problems.LogisticRegression(n_features=3, n_points=100)
        >>> x = fam.sample(8, seed=0)
        >>> do.solve(fam, do.LBFGS(), x, tol=1e-6).result.tolist() == [0] * 8
        True
    """

    def __init__(
        self,
        n_features: int = 3,
        n_points: int = 100,
        l2: float = 1e-2,
        separation: float = 2.0,
        dataset: str = "synthetic",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(n_features, n_points, l2, dataset, dtype)
        self.separation = separation

    def _sample(self, batch_size, generator):
        if self.dataset == "breast_cancer":
            return self._sample_breast_cancer(batch_size, generator, binary=True)
        d, N = self.n_features, self.n_points
        u = torch.randn(batch_size, 1, d, generator=generator, dtype=torch.float64)
        u = u / u.norm(dim=-1, keepdim=True)
        labels = (torch.rand(batch_size, N, generator=generator, dtype=torch.float64) < 0.5).to(torch.float64)
        X = torch.randn(batch_size, N, d, generator=generator, dtype=torch.float64)
        X = X + (labels[..., None] * 2 - 1) * (self.separation / 2) * u
        return RegressionContext(X.to(self.dtype), labels.to(self.dtype))

    def objective(self, y, x):
        return self._value_terms(y, x)[0]

    def _value_terms(self, y, x):
        """``(f, z, t, graph)``: the objective, the margins ``z`` and the targets ``t`` (both ``(B, 1, N)``), and
        whether autograd records a graph.

        loss_j = softplus(z_j) - t_j z_j with softplus(z) = max(z, 0) + log1p(exp(-|z|)) (stable for any z):
        fewer and cheaper elementwise passes than ``binary_cross_entropy_with_logits``, same value to rounding.
        Without a graph to record, the passes run in place on one buffer (fewer allocations); with one,
        ``binary_cross_entropy_with_logits``."""
        X, t = x.features, x.targets[:, None, :]
        y3 = y[:, None, :]
        # row-vector form w^T X^T + w_0 (one batched gemv over contiguous rows of X), kept (B, 1, N)
        z = torch.baddbmm(y3[..., -1:], y3[..., :-1], X.transpose(-1, -2))
        N = z.shape[-1]
        graph = torch.is_grad_enabled() and (y.requires_grad or X.requires_grad or t.requires_grad)
        if graph:  # its backward is exact at z = 0 (max / abs above have one-sided derivatives there)
            terms = F.binary_cross_entropy_with_logits(z, t.expand_as(z), reduction="none")
        else:
            terms = z.abs().neg_().exp_().log1p_().add_(z.clamp_min(0)).addcmul_(t, z, value=-1)
        # (sum_j loss_j + N l2/2 ||y||^2) / N
        value = torch.add(terms.sum((-2, -1)), (y * y).sum(-1), alpha=0.5 * self.l2 * N).div_(N)
        return value, z, t, graph

    def smooth_value_and_grad(self, y, x):
        value, z, t, graph = self._value_terms(y, x)
        N = z.shape[-1]
        r = torch.sigmoid(z) - t if graph else torch.sigmoid(z).sub_(t)  # N dloss/dz, (B, 1, N)
        # (X^T r, sum r) / N + l2 y
        grad = torch.cat([r @ x.features, r.sum(-1, keepdim=True)], dim=-1)[:, 0]
        return value, torch.add(grad, y, alpha=self.l2 * N).div_(N)


class RidgeRegression(_LinearFamily):
    r"""Ridge regression :math:`f(y) = \frac{1}{2N}\|X w + w_0 - t\|^2 + \frac{\lambda}{2}\|y\|^2`.

    Synthetic contexts: ``X ~ N(0, I)``, ``t = X w_true + noise * eps`` with ``w_true ~ N(0, I)``.
    :meth:`solution` gives the closed form.
    """

    def __init__(
        self,
        n_features: int = 5,
        n_points: int = 50,
        l2: float = 1e-1,
        noise: float = 0.1,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(n_features, n_points, l2, "synthetic", dtype)
        self.noise = noise

    def _sample(self, batch_size, generator):
        d, N = self.n_features, self.n_points
        X = torch.randn(batch_size, N, d, generator=generator, dtype=torch.float64)
        w = torch.randn(batch_size, d, generator=generator, dtype=torch.float64)
        t = (X @ w[..., None])[..., 0] + self.noise * torch.randn(
            batch_size, N, generator=generator, dtype=torch.float64
        )
        return RegressionContext(X.to(self.dtype), t.to(self.dtype))

    def objective(self, y, x):
        r = self.linear(y, x) - x.targets
        return 0.5 * (r * r).mean(-1) + self._penalty(y)

    def smooth_value_and_grad(self, y, x):
        r = self.linear(y, x) - x.targets
        return 0.5 * (r * r).mean(-1) + self._penalty(y), self._grad_from_residual(y, x, r / r.shape[-1])

    def solution(self, x: RegressionContext) -> Tensor:
        r"""Closed form :math:`(Z^\top Z / N + \lambda I)^{-1} Z^\top t / N` with ``Z = [X, 1]``."""
        Z = torch.cat([x.features, torch.ones_like(x.features[..., :1])], dim=-1)
        N = Z.shape[1]
        A = Z.transpose(-1, -2) @ Z / N + self.l2 * torch.eye(self.dim, dtype=Z.dtype, device=Z.device)
        return torch.linalg.solve(A, (Z.transpose(-1, -2) @ x.targets[..., None])[..., 0] / N)


class RobustRegression(_LinearFamily):
    r"""Robust linear regression with the Geman-McClure loss (non-convex):
    :math:`f(y) = \frac1N \sum_j \frac{r_j^2}{r_j^2 + c^2} + \frac{\lambda}{2}\|y\|^2`, :math:`r = Xw + w_0 - t`.

    Synthetic contexts as :class:`RidgeRegression`, with a fraction ``outliers`` of the targets replaced by
    large errors (``N(0, 10^2)``).
    """

    def __init__(
        self,
        n_features: int = 5,
        n_points: int = 100,
        l2: float = 1e-3,
        scale: float = 1.0,
        outliers: float = 0.2,
        noise: float = 0.1,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(n_features, n_points, l2, "synthetic", dtype)
        self.scale, self.outliers, self.noise = scale, outliers, noise

    def _sample(self, batch_size, generator):
        base = RidgeRegression(self.n_features, self.n_points, noise=self.noise, dtype=torch.float64)
        ctx = base._sample(batch_size, generator)
        mask = torch.rand(batch_size, self.n_points, generator=generator, dtype=torch.float64) < self.outliers
        t = torch.where(
            mask, 10 * torch.randn(batch_size, self.n_points, generator=generator, dtype=torch.float64), ctx.targets
        )
        return RegressionContext(ctx.features.to(self.dtype), t.to(self.dtype))

    def objective(self, y, x):
        r = self.linear(y, x) - x.targets
        c2 = self.scale**2
        return (r * r / (r * r + c2)).mean(-1) + self._penalty(y)

    def smooth_value_and_grad(self, y, x):
        r = self.linear(y, x) - x.targets
        c2 = self.scale**2
        den = r * r + c2
        value = (r * r / den).mean(-1) + self._penalty(y)
        dloss = (2 * r * c2 / (den * den)) / r.shape[-1]
        return value, self._grad_from_residual(y, x, dloss)
