r"""The three problem families of Li & Malik (2017), whose data are Gaussian mixtures with random means and
covariances (one data set, i.e. one objective, per instance).

* :class:`MixtureLogisticRegression`: 100 points in 3 dimensions from two Gaussians (half from each, the
  cluster is the label), the zoo's L2-regularized logistic loss.
* :class:`MixtureRobustRegression`: 100 points in 3 dimensions from four Gaussians (25 each); the targets of
  each cluster follow their own random linear relation plus Gaussian noise; the zoo's Geman-McClure loss
  :math:`\frac1N\sum_j r_j^2 / (r_j^2 + c^2)` (non-convex).
* :class:`MixtureMLPClassifier`: 100 points in 2 dimensions from four Gaussians, two per class; the zoo's MLP
  classifier with one hidden ReLU layer, plus :math:`\frac{\lambda}{2}\sum \|W\|^2` on the weight matrices.

The objectives are the zoo's (:mod:`doubleopt.problems.regression`, :mod:`doubleopt.problems.mlp`); these
classes only draw the paper's data and starting points. Cluster means are :math:`N(0, m^2 I)`, covariances
:math:`A A^\top` with :math:`A_{jk} \sim N(0, 1/d)` (``mean_scale`` :math:`m`). Settings that the paper states
(sizes, dimensions, :math:`c = 1`, :math:`\lambda = 5\cdot 10^{-4}`) are the defaults; the others (``mean_scale``,
``noise``, the hidden width) are our choices, documented on each class.

:meth:`~doubleopt.Problem.init` with a ``generator`` draws random starting points
(:math:`N(0, \texttt{init\_scale}^2)` for the linear models, Glorot for the network); without one it is the zoo's
deterministic default.

Reference:
    K. Li, J. Malik, "Learning to optimize", ICLR 2017, Sec. 4.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .mlp import ClassificationContext, MLPClassifier
from .regression import LogisticRegression, RegressionContext, RobustRegression


def gaussian_mixture(
    batch_size: int,
    n_points: int,
    dim: int,
    n_clusters: int,
    generator: torch.Generator,
    mean_scale: float = 2.0,
) -> tuple[Tensor, Tensor]:
    r"""``(points (B, N, d), cluster (B, N))`` in float64: point ``j`` belongs to cluster ``j mod K`` (balanced).

    Cluster ``k`` of instance ``b`` has mean :math:`\mu_{bk} \sim N(0, m^2 I)` and covariance
    :math:`A_{bk} A_{bk}^\top`, :math:`(A_{bk})_{ij} \sim N(0, 1/d)`.

    Example:
        >>> import torch
        >>> X, c = gaussian_mixture(2, 100, 3, 4, torch.Generator().manual_seed(0))
        >>> tuple(X.shape), c[0, :6].tolist()
        ((2, 100, 3), [0, 1, 2, 3, 0, 1])
    """
    if n_clusters < 1 or n_points < n_clusters:
        raise ValueError(f"need 1 <= n_clusters <= n_points, got {n_clusters} clusters for {n_points} points")
    B, N, d, K = batch_size, n_points, dim, n_clusters
    means = mean_scale * torch.randn(B, K, d, generator=generator, dtype=torch.float64)
    A = torch.randn(B, K, d, d, generator=generator, dtype=torch.float64) / d**0.5
    cluster = (torch.arange(N) % K).expand(B, N)
    z = torch.randn(B, N, d, generator=generator, dtype=torch.float64)
    idx = cluster[..., None].expand(B, N, d)
    A_j = A[torch.arange(B)[:, None], cluster]  # (B, N, d, d)
    X = torch.gather(means, 1, idx) + (A_j @ z[..., None])[..., 0]
    return X, cluster.clone()


def _gaussian_start(dim: int, scale: float, x_tensor: Tensor, generator: torch.Generator | None) -> Tensor:
    B = x_tensor.shape[0]
    if generator is None:
        return x_tensor.new_zeros(B, dim)
    y = scale * torch.randn(B, dim, generator=generator, dtype=torch.float64)
    return y.to(dtype=x_tensor.dtype, device=x_tensor.device)


class MixtureLogisticRegression(LogisticRegression):
    r"""Logistic regression on two Gaussian clusters with random means and covariances (Li & Malik, Sec. 4.1).

    The objective is :class:`~doubleopt.problems.LogisticRegression`'s
    :math:`\frac1N\sum_j \log(1 + e^{z_j}) - t_j z_j + \frac{\lambda}{2}\|y\|^2`, :math:`z = Xw + w_0`, with
    :math:`\lambda = 5\cdot10^{-4}` as in the paper (which does not regularize the intercept :math:`w_0`; here it
    is, with the same tiny weight). Labels: the cluster, 50 points each.

    Args:
        n_features: data dimension (paper: 3); ``y`` has ``n_features + 1`` entries.
        n_points: points per data set (paper: 100).
        l2: :math:`\lambda`.
        mean_scale: standard deviation of the cluster means (ours: 2).
        init_scale: standard deviation of random starting points (:meth:`init` with a generator; ours: 1).

    Example:
        >>> import torch, doubleopt as do
        >>> fam = do.problems.MixtureLogisticRegression()
        >>> x = fam.sample(4, seed=0)
        >>> tuple(x.features.shape), x.targets[0, :4].tolist()
        ((4, 100, 3), [0.0, 1.0, 0.0, 1.0])
        >>> sol = do.solve(fam, do.LBFGS(), x, max_steps=100, throw=False)
        >>> bool((sol.value < fam.objective(fam.init(x), x)).all())
        True
    """

    def __init__(
        self,
        n_features: int = 3,
        n_points: int = 100,
        l2: float = 5e-4,
        mean_scale: float = 2.0,
        init_scale: float = 1.0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(n_features=n_features, n_points=n_points, l2=l2, dtype=dtype)
        self.mean_scale, self.init_scale = float(mean_scale), float(init_scale)

    def _sample(self, batch_size, generator):
        X, cluster = gaussian_mixture(batch_size, self.n_points, self.n_features, 2, generator, self.mean_scale)
        return RegressionContext(X.to(self.dtype), cluster.to(self.dtype))

    def init(self, x, generator: torch.Generator | None = None):
        """Zeros, or :math:`N(0, \\texttt{init\\_scale}^2)` starting points drawn with ``generator``."""
        return _gaussian_start(self.dim, self.init_scale, x.features, generator)


class MixtureRobustRegression(RobustRegression):
    r"""Geman-McClure robust regression on four clusters with their own linear relations (Li & Malik, Sec. 4.2).

    Points of cluster :math:`k` have targets :math:`t = x^\top w_k + b_k + \nu\,\varepsilon` with
    :math:`w_k \sim N(0, I)`, :math:`b_k \sim N(0, 1)`, :math:`\varepsilon \sim N(0, 1)`. The objective is
    :class:`~doubleopt.problems.RobustRegression`'s
    :math:`\frac1N\sum_j \frac{r_j^2}{r_j^2 + c^2} + \frac{\lambda}{2}\|y\|^2` with :math:`c = 1`, :math:`\lambda = 0`
    (the paper's loss, which has no regularizer): one linear model cannot fit all clusters, so the fit is
    non-convex with several local minima.

    Args:
        n_features: data dimension (paper: 3).
        n_points: points per data set (paper: 100, 25 per cluster).
        n_clusters: clusters (paper: 4).
        noise: :math:`\nu` (ours: 0.1).
        mean_scale: standard deviation of the cluster means (ours: 2).
        init_scale: standard deviation of random starting points.

    Example:
        >>> import torch, doubleopt as do
        >>> fam = do.problems.MixtureRobustRegression()
        >>> x = fam.sample(4, seed=0)
        >>> y0 = fam.init(x, torch.Generator().manual_seed(0))
        >>> sol = do.solve(fam, do.LBFGS(), x, y0, max_steps=300, throw=False)
        >>> bool((sol.value < fam.objective(y0, x)).all())
        True
    """

    def __init__(
        self,
        n_features: int = 3,
        n_points: int = 100,
        n_clusters: int = 4,
        l2: float = 0.0,
        noise: float = 0.1,
        mean_scale: float = 2.0,
        init_scale: float = 1.0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(n_features=n_features, n_points=n_points, l2=l2, scale=1.0, noise=noise, dtype=dtype)
        self.n_clusters, self.mean_scale, self.init_scale = int(n_clusters), float(mean_scale), float(init_scale)

    def _sample(self, batch_size, generator):
        B, d, K = batch_size, self.n_features, self.n_clusters
        X, cluster = gaussian_mixture(B, self.n_points, d, K, generator, self.mean_scale)
        w = torch.randn(B, K, d, generator=generator, dtype=torch.float64)
        b = torch.randn(B, K, generator=generator, dtype=torch.float64)
        w_j = torch.gather(w, 1, cluster[..., None].expand(-1, -1, d))  # (B, N, d)
        t = (X * w_j).sum(-1) + torch.gather(b, 1, cluster)
        t = t + self.noise * torch.randn(t.shape, generator=generator, dtype=torch.float64)
        return RegressionContext(X.to(self.dtype), t.to(self.dtype))

    def init(self, x, generator: torch.Generator | None = None):
        """Zeros, or :math:`N(0, \\texttt{init\\_scale}^2)` starting points drawn with ``generator``."""
        return _gaussian_start(self.dim, self.init_scale, x.features, generator)


class MixtureMLPClassifier(MLPClassifier):
    r"""A two-layer ReLU network classifying four Gaussian clusters, two per class (Li & Malik, Sec. 4.3).

    Objective: the zoo's mean cross-entropy (:class:`~doubleopt.problems.MLPClassifier`, one hidden ReLU layer,
    softmax output) plus :math:`\frac{\lambda}{2}(\|W_1\|^2 + \|W_2\|^2)` on the weight matrices (not the biases),
    :math:`\lambda = 5\cdot10^{-4}`. Clusters :math:`k = 0..3` hold 25 points each, class :math:`k \bmod 2`.

    Args:
        n_inputs: data dimension (ours: 2).
        hidden: hidden ReLU units (ours: 4).
        n_points: points per data set (100).
        l2: :math:`\lambda`.
        mean_scale: standard deviation of the cluster means (ours: 2).

    Example:
        >>> import torch, doubleopt as do
        >>> fam = do.problems.MixtureMLPClassifier()
        >>> x = fam.sample(4, seed=0)
        >>> fam.dim, tuple(x.inputs.shape), x.labels[0, :4].tolist()
        (22, (4, 100, 2), [0, 1, 0, 1])
        >>> y0 = fam.init(x, torch.Generator().manual_seed(0))
        >>> sol = do.solve(fam, do.Adam(lr=0.05), x, y0, max_steps=200, throw=False)
        >>> bool((sol.value < fam.objective(y0, x)).all())
        True
    """

    def __init__(
        self,
        n_inputs: int = 2,
        hidden: int = 4,
        n_points: int = 100,
        l2: float = 5e-4,
        mean_scale: float = 2.0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(
            hidden=(hidden,),
            activation="relu",
            dataset="synthetic",
            n_points=n_points,
            n_inputs=n_inputs,
            n_classes=2,
            dtype=dtype,
        )
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.l2, self.mean_scale = float(l2), float(mean_scale)

    def _sample(self, batch_size, generator):
        X, cluster = gaussian_mixture(batch_size, self.n_points, self.n_inputs, 4, generator, self.mean_scale)
        return ClassificationContext(X.to(self.dtype), cluster % 2)

    def objective(self, y, x):
        penalty = sum((W * W).sum((-2, -1)) for W, _ in self.unflatten(y))
        return super().objective(y, x) + 0.5 * self.l2 * penalty


__all__ = ["gaussian_mixture", "MixtureLogisticRegression", "MixtureRobustRegression", "MixtureMLPClassifier"]
