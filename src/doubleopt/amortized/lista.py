r"""Learned ISTA for sparse coding: LISTA (coupled weights, support selection) and ALISTA.

Both unroll ``K`` proximal-gradient layers on :class:`~doubleopt.problems.Lasso` contexts ``b``
(measurements), starting from :math:`y_0 = 0`, with the soft threshold
:math:`\eta_\theta(v) = \mathrm{sign}(v)\max(|v| - \theta, 0)`:

* **LISTA-CP** (Gregor & LeCun 2010; coupled form of Chen, Liu, Wang & Yin 2018):
  :math:`y_{k+1} = \eta_{\theta_k}\big(y_k + W_k^\top (b - D y_k)\big)` with a learned
  :math:`W_k \in \mathbb{R}^{m\times n}` and threshold :math:`\theta_k` per layer. Initialized at
  :math:`W_k = D / L`, :math:`\theta_k = \lambda / L` it *is* ISTA, layer for layer.
* **ALISTA** (Liu, Chen, Wang & Yin 2019): the weight is analytic,
  :math:`W = \arg\min_W \|W^\top D\|_F` s.t. :math:`\mathrm{diag}(W^\top D) = 1`, i.e.
  :math:`w_i = (DD^\top)^{-1} d_i / (d_i^\top (DD^\top)^{-1} d_i)`; only a step size :math:`\gamma_k` and a
  threshold :math:`\theta_k` per layer are learned:
  :math:`y_{k+1} = \eta_{\theta_k}(y_k - \gamma_k W^\top(Dy_k - b))`.

Support selection (Chen et al. 2018): in layer ``k`` the largest :math:`p_k = \min(k\,p, p_\max)` fraction of
entries (by magnitude) that exceed the threshold pass unshrunk, which removes the bias of the soft threshold
on the detected support.

Each layer costs two ``(B, m) x (m, n)`` matrix products, like one ISTA step. Models map a
:class:`~doubleopt.problems.LassoContext` to codes ``(B, n)``, so ``do.amortized.FullyAmortized(LISTA(fam))``
is a solver for ``do.solve``.

Example:
    >>> import torch, doubleopt as do
    >>> fam = do.problems.Lasso(n_measurements=20, n_atoms=40, lam=0.1)
    >>> x = fam.sample(3, seed=0)
    >>> lista = do.amortized.LISTA(fam, layers=5)   # untrained = 5 ISTA steps
    >>> ista = do.solve(fam, do.ISTA(), x, max_steps=5, tol=0.0, throw=False).y
    >>> torch.allclose(lista(x), ista, atol=1e-5)
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..problems.lasso import Lasso, LassoContext, soft_threshold


def shrink(v: Tensor, theta: Tensor, keep_fraction: float) -> Tensor:
    """Soft threshold with support selection: the top ``keep_fraction`` of entries above ``theta`` pass."""
    out = soft_threshold(v, theta)
    count = int(keep_fraction * v.shape[-1])
    if count <= 0:
        return out
    mag = v.abs()
    kth = mag.detach().topk(count, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    keep = (mag >= kth) & (mag > theta)
    return torch.where(keep, v, out)


class _UnrolledLasso(nn.Module):
    def __init__(self, problem: Lasso, layers: int, support_selection: float, max_support: float):
        super().__init__()
        if not isinstance(problem, Lasso):
            raise TypeError(f"{type(self).__name__} needs a do.problems.Lasso family, got {type(problem).__name__}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        if not (0 <= support_selection <= 1 and 0 <= max_support <= 1):
            raise ValueError("support_selection and max_support are fractions in [0, 1]")
        self.register_buffer("dictionary", problem.dictionary.clone())
        self.layers, self.support_selection, self.max_support = layers, support_selection, max_support
        self.lipschitz = float(problem.lipschitz_constant(None))
        self.lam = problem.lam

    def keep_fraction(self, k: int) -> float:
        return min(k * self.support_selection, self.max_support)

    def _check(self, x: LassoContext) -> Tensor:
        if not isinstance(x, LassoContext):
            raise ValueError(f"{type(self).__name__} expects a LassoContext, got {type(x).__name__}")
        b = x.measurements
        if b.dim() != 2 or b.shape[1] != self.dictionary.shape[0]:
            raise ValueError(f"measurements must be (B, {self.dictionary.shape[0]}), got {tuple(b.shape)}")
        return b

    def layer(self, k: int, y: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: LassoContext, return_all: bool = False, depth: int | None = None) -> Tensor | list[Tensor]:
        """Codes ``(B, n)`` after all layers (or the first ``depth``); ``return_all``: every layer's output."""
        b = self._check(x)
        y = b.new_zeros(b.shape[0], self.dictionary.shape[1])
        outs = []
        for k in range(self.layers if depth is None else min(depth, self.layers)):
            y = self.layer(k, y, b)
            outs.append(y)
        return outs if return_all else y


class LISTA(_UnrolledLasso):
    """LISTA-CP with per-layer weights ``W_k`` and thresholds ``theta_k`` (see the module docstring).

    Args:
        problem: the :class:`~doubleopt.problems.Lasso` family (its dictionary, ``lam`` and ``L``).
        layers: number of unrolled layers ``K``.
        support_selection: per-layer increment ``p`` of the kept-support fraction (0 disables it).
        max_support: cap :math:`p_\\max` of that fraction.
    """

    def __init__(self, problem: Lasso, layers: int = 16, support_selection: float = 0.0, max_support: float = 0.13):
        super().__init__(problem, layers, support_selection, max_support)
        W = (self.dictionary / self.lipschitz).unsqueeze(0).repeat(layers, 1, 1)
        self.weights = nn.Parameter(W)  # (K, m, n)
        self.thresholds = nn.Parameter(torch.full((layers,), self.lam / self.lipschitz, dtype=W.dtype))

    def layer(self, k, y, b):
        r = b - y @ self.dictionary.T if k > 0 else b
        v = y + r @ self.weights[k]
        return shrink(v, self.thresholds[k], self.keep_fraction(k))


def analytic_weight(dictionary: Tensor) -> Tensor:
    """ALISTA's :math:`W = \\arg\\min \\|W^\\top D\\|_F` s.t. :math:`\\mathrm{diag}(W^\\top D) = 1`."""
    D = dictionary.to(torch.float64)
    Z = torch.linalg.solve(D @ D.T, D)  # (DD^T)^{-1} d_i as columns
    return (Z / (D * Z).sum(0, keepdim=True)).to(dictionary.dtype)


class ALISTA(_UnrolledLasso):
    """ALISTA: analytic weight, learned step sizes ``gamma_k`` and thresholds ``theta_k`` (2K parameters)."""

    def __init__(self, problem: Lasso, layers: int = 16, support_selection: float = 0.0, max_support: float = 0.13):
        super().__init__(problem, layers, support_selection, max_support)
        W = analytic_weight(self.dictionary)
        self.register_buffer("weight", W)
        gamma0 = 1.0 / float(torch.linalg.matrix_norm((W.T @ self.dictionary).to(torch.float64), ord=2))
        self.gammas = nn.Parameter(torch.full((layers,), gamma0, dtype=W.dtype))
        self.thresholds = nn.Parameter(torch.full((layers,), self.lam * gamma0, dtype=W.dtype))

    def layer(self, k, y, b):
        r = y @ self.dictionary.T - b if k > 0 else -b
        v = y - self.gammas[k] * (r @ self.weight)
        return shrink(v, self.thresholds[k], self.keep_fraction(k))
