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

Firm shrinkage (Gao & Bruce 1997), ``shrinkage="firm"``: a second learned threshold
:math:`\theta'_k = \theta_k (1 + e^{g_k}) > \theta_k` above which entries pass unshrunk, with a linear
ramp between (:func:`firm_threshold`). Like support selection it removes the soft threshold's bias on large
entries, but without a per-instance top-k (which costs as much as a layer's matrix products on a CPU).

Training: ``do.amortized.fit(..., loss="layerwise", targets=...)`` averages the log mean squared error of
*every* layer's output (each dB gained at any depth counts the same), so a prefix of the network is
already a good solver; ``loss="regression"`` trains the last layer's output only.

Each layer costs two ``(B, m) x (m, n)`` matrix products, like one ISTA step, fused with the additions
(``addmm``); outside autograd the thresholds are Python numbers, so the shrinkage is 1-4 elementwise passes.
Models map a :class:`~doubleopt.problems.LassoContext` to codes ``(B, n)``, so
``do.amortized.FullyAmortized(LISTA(fam))`` is a solver for ``do.solve``.

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

import math

import torch
from torch import Tensor, nn

from ..problems.lasso import Lasso, LassoContext, clip_symmetric, soft_threshold


def shrink(v: Tensor, theta, keep_fraction: float) -> Tensor:
    """Soft threshold with support selection: the top ``keep_fraction`` of entries above ``theta`` pass."""
    if not isinstance(theta, Tensor) and keep_fraction <= 0:
        return torch.nn.functional.softshrink(v, theta)  # one fused pass
    out = soft_threshold(v, theta)
    count = int(keep_fraction * v.shape[-1])
    if count <= 0:
        return out
    mag = v.abs()
    kth = mag.detach().topk(count, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    keep = (mag >= kth) & (mag > theta)
    return torch.where(keep, v, out)


def firm_threshold(v: Tensor, theta, theta_hi) -> Tensor:
    r"""Firm shrinkage (Gao & Bruce 1997) with thresholds :math:`0 < \theta < \theta'`:

    .. math:: \eta(v) = \begin{cases} 0 & |v| \le \theta \\
        \mathrm{sign}(v)\,\theta' (|v| - \theta) / (\theta' - \theta) & \theta < |v| \le \theta' \\
        v & |v| > \theta' \end{cases}

    computed as :math:`v + (a - 1) w - a\,\mathrm{clip}(w, \theta)` with :math:`w = \mathrm{clip}(v, \theta')`,
    :math:`a = \theta' / (\theta' - \theta)` (four elementwise passes, differentiable in both thresholds).

    Example:
        >>> import torch
        >>> firm_threshold(torch.tensor([0.5, -1.5, 2.5, -4.0]), 1.0, 3.0)
        tensor([ 0.0000, -0.7500,  2.2500, -4.0000])
    """
    a = theta_hi / (theta_hi - theta)
    w = clip_symmetric(v, theta_hi)
    c = clip_symmetric(w, theta)
    if isinstance(a, Tensor):
        return v + (a - 1) * w - a * c
    return torch.add(v, w, alpha=a - 1).sub_(c, alpha=a)


SHRINKAGES = ("soft", "firm")


class _UnrolledLasso(nn.Module):
    def __init__(
        self,
        problem: Lasso,
        layers: int = 16,
        support_selection: float = 0.0,
        max_support: float = 0.13,
        shrinkage: str = "soft",
    ):
        super().__init__()
        if not isinstance(problem, Lasso):
            raise TypeError(f"{type(self).__name__} needs a do.problems.Lasso family, got {type(problem).__name__}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        if not (0 <= support_selection <= 1 and 0 <= max_support <= 1):
            raise ValueError("support_selection and max_support are fractions in [0, 1]")
        if shrinkage not in SHRINKAGES:
            raise ValueError(f"shrinkage must be one of {SHRINKAGES}, got {shrinkage!r}")
        if shrinkage == "firm" and support_selection > 0:
            raise ValueError("firm shrinkage already passes large entries unshrunk: use support_selection=0")
        self.shrinkage = shrinkage
        self.register_buffer("dictionary", problem.dictionary.clone())
        self.layers, self.support_selection, self.max_support = layers, support_selection, max_support
        self.lipschitz = float(problem.lipschitz_constant(None))
        self.lam = problem.lam
        self._init_parameters()

    def _init_parameters(self) -> None:
        raise NotImplementedError

    def keep_fraction(self, k: int) -> float:
        return min(k * self.support_selection, self.max_support)

    def _check(self, x: LassoContext) -> Tensor:
        if not isinstance(x, LassoContext):
            raise ValueError(f"{type(self).__name__} expects a LassoContext, got {type(x).__name__}")
        b = x.measurements
        if b.dim() != 2 or b.shape[1] != self.dictionary.shape[0]:
            raise ValueError(f"measurements must be (B, {self.dictionary.shape[0]}), got {tuple(b.shape)}")
        return b

    def _init_thresholds(self, theta0: float, dtype) -> None:
        self.thresholds = nn.Parameter(torch.full((self.layers,), theta0, dtype=dtype))
        if self.shrinkage == "firm":  # theta'_k = theta_k (1 + exp(g_k)); g = 2: theta' = 8.4 theta
            self.firm_gaps = nn.Parameter(torch.full((self.layers,), 2.0, dtype=dtype))

    def _numbers(self) -> dict[str, list]:
        """Per-layer scalars: Python numbers outside autograd (faster elementwise passes), else tensors."""
        params = {k: v for k, v in self.named_parameters(recurse=False) if v.dim() == 1}
        if torch.is_grad_enabled() and any(p.requires_grad for p in params.values()):
            return {k: list(v.unbind()) for k, v in params.items()}
        return {k: v.tolist() for k, v in params.items()}

    def _shrink(self, k: int, v: Tensor, num: dict[str, list]) -> Tensor:
        theta = num["thresholds"][k]
        if self.shrinkage == "firm":
            gap = num["firm_gaps"][k]
            hi = theta * (1 + (gap.exp() if isinstance(gap, Tensor) else math.exp(gap)))
            return firm_threshold(v, theta, hi)
        return shrink(v, theta, self.keep_fraction(k))

    def layer(self, k: int, y: Tensor, b: Tensor, num: dict[str, list]) -> Tensor:
        raise NotImplementedError

    def forward(self, x: LassoContext, return_all: bool = False, depth: int | None = None) -> Tensor | list[Tensor]:
        """Codes ``(B, n)`` after all layers (or the first ``depth``); ``return_all``: every layer's output."""
        b = self._check(x)
        y = b.new_zeros(b.shape[0], self.dictionary.shape[1])
        num = self._numbers()
        outs = []
        for k in range(self.layers if depth is None else min(depth, self.layers)):
            y = self.layer(k, y, b, num)
            outs.append(y)
        return outs if return_all else y


class LISTA(_UnrolledLasso):
    """LISTA-CP with per-layer weights ``W_k`` and thresholds ``theta_k`` (see the module docstring).

    Args:
        problem: the :class:`~doubleopt.problems.Lasso` family (its dictionary, ``lam`` and ``L``).
        layers: number of unrolled layers ``K``.
        support_selection: per-layer increment ``p`` of the kept-support fraction (0 disables it).
        max_support: cap :math:`p_\\max` of that fraction.
        shrinkage: ``"soft"`` (with optional support selection) or ``"firm"`` (a learned second threshold).
    """

    def _init_parameters(self) -> None:
        W = (self.dictionary / self.lipschitz).unsqueeze(0).repeat(self.layers, 1, 1)
        self.weights = nn.Parameter(W)  # (K, m, n)
        self._init_thresholds(self.lam / self.lipschitz, W.dtype)

    def layer(self, k, y, b, num):
        if k == 0:
            return self._shrink(k, b @ self.weights[0], num)
        r = torch.addmm(b, y, self.dictionary.T, alpha=-1)  # b - D y
        return self._shrink(k, torch.addmm(y, r, self.weights[k]), num)


def analytic_weight(dictionary: Tensor) -> Tensor:
    """ALISTA's :math:`W = \\arg\\min \\|W^\\top D\\|_F` s.t. :math:`\\mathrm{diag}(W^\\top D) = 1`."""
    D = dictionary.to(torch.float64)
    Z = torch.linalg.solve(D @ D.T, D)  # (DD^T)^{-1} d_i as columns
    return (Z / (D * Z).sum(0, keepdim=True)).to(dictionary.dtype)


class ALISTA(_UnrolledLasso):
    """ALISTA: analytic weight, learned step sizes ``gamma_k`` and thresholds ``theta_k`` (2K parameters;
    3K with ``shrinkage="firm"``). Arguments as for :class:`LISTA`."""

    def _init_parameters(self) -> None:
        W = analytic_weight(self.dictionary)
        self.register_buffer("weight", W)
        gamma0 = 1.0 / float(torch.linalg.matrix_norm((W.T @ self.dictionary).to(torch.float64), ord=2))
        self.gammas = nn.Parameter(torch.full((self.layers,), gamma0, dtype=W.dtype))
        self._init_thresholds(self.lam * gamma0, W.dtype)

    def layer(self, k, y, b, num):
        gamma = num["gammas"][k]
        if isinstance(gamma, Tensor):  # under autograd
            r = -b if k == 0 else y @ self.dictionary.T - b
            return self._shrink(k, y - gamma * (r @ self.weight), num)
        if k == 0:  # y = 0: v = gamma W^T b
            return self._shrink(k, (b @ self.weight).mul_(gamma), num)
        r = torch.addmm(b, y, self.dictionary.T, beta=-1)  # D y - b
        return self._shrink(k, torch.addmm(y, r, self.weight, alpha=-gamma), num)
