r"""LASSO / sparse coding: :math:`f(y; b) = \tfrac12 \|D y - b\|^2 + \lambda \|y\|_1` (composite).

The dictionary ``D`` (``n_measurements x n_atoms``) is shared by the family (a buffer, Gaussian with
unit-norm columns, seeded by ``dictionary_seed``); contexts are measurements ``b = D y_true + noise``
of sparse codes ``y_true`` with about ``sparsity * n_atoms`` non-zeros (Bernoulli-Gaussian).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._problem import ProblemFamily


@dataclass
class LassoContext:
    """Contexts of :class:`Lasso` (a batch, one row per instance).

    Attributes:
        measurements: ``(B, m)`` the measurements.
        codes: ``(B, n)`` the sparse codes that generated them (for the NMSE).
    """

    measurements: Tensor  # (B, m)
    codes: Tensor  # (B, n) the sparse codes that generated them (for NMSE)


def clip_symmetric(v: Tensor, bound: Tensor | float) -> Tensor:
    """``clip(v, -bound, bound)``: one ``clamp`` pass for a float bound; for a tensor bound (any broadcastable
    shape) ``maximum`` then ``minimum``, several times faster on CPU than ``clamp`` with tensor bounds."""
    if isinstance(bound, Tensor):
        return torch.minimum(torch.maximum(v, -bound), bound)
    return v.clamp(-bound, bound)


def soft_threshold(v: Tensor, threshold: Tensor | float) -> Tensor:
    """:math:`\\mathrm{sign}(v) \\max(|v| - \\tau, 0) = v - \\mathrm{clip}(v, -\\tau, \\tau)`, the prox of
    :math:`\\tau \\|\\cdot\\|_1` (differentiable in ``v`` and a tensor ``threshold``)."""
    return v - clip_symmetric(v, threshold)


class Lasso(ProblemFamily):
    """LASSO family (see module docstring).

    Example:
        >>> import doubleopt as do
        >>> fam = do.problems.Lasso(n_measurements=30, n_atoms=60, lam=0.05)
        >>> x = fam.sample(5, seed=1)
        >>> sol = do.solve(fam, do.FISTA(), x, max_steps=3000, tol=1e-5)
        >>> sol.y.shape
        torch.Size([5, 60])
    """

    is_composite = True

    def __init__(
        self,
        n_measurements: int = 250,
        n_atoms: int = 500,
        lam: float = 0.1,
        sparsity: float = 0.1,
        noise: float = 0.01,
        dictionary_seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        g = torch.Generator().manual_seed(dictionary_seed)
        D = torch.randn(n_measurements, n_atoms, generator=g, dtype=torch.float64)
        D = D / D.norm(dim=0, keepdim=True)
        self.register_buffer("dictionary", D.to(dtype))
        self.lam, self.sparsity, self.noise, self.dtype = lam, sparsity, noise, dtype
        self.n_measurements, self.n_atoms, self.dim = n_measurements, n_atoms, n_atoms
        self._lipschitz = float(torch.linalg.matrix_norm(D, ord=2) ** 2)

    def _sample(self, batch_size, generator):
        n = self.n_atoms
        support = torch.rand(batch_size, n, generator=generator, dtype=torch.float64) < self.sparsity
        codes = torch.where(support, torch.randn(batch_size, n, generator=generator, dtype=torch.float64), 0.0)
        D = self.dictionary.to(torch.float64)
        b = codes @ D.T + self.noise * torch.randn(
            batch_size, self.n_measurements, generator=generator, dtype=torch.float64
        )
        return LassoContext(b.to(self.dtype), codes.to(self.dtype))

    def smooth(self, y, x):
        r = y @ self.dictionary.T - x.measurements
        return 0.5 * (r * r).sum(-1)

    def smooth_value_and_grad(self, y, x):
        r = y @ self.dictionary.T - x.measurements
        return 0.5 * (r * r).sum(-1), r @ self.dictionary

    def nonsmooth(self, y, x):
        return self.lam * y.abs().sum(-1)

    def prox(self, y, x, step):
        return soft_threshold(y, self.lam * step[:, None])

    def lipschitz_constant(self, x) -> Tensor:
        """:math:`\\|D\\|_2^2`, the Lipschitz constant of the smooth part's gradient."""
        return torch.tensor(self._lipschitz, dtype=self.dictionary.dtype, device=self.dictionary.device)

    def nmse_db(self, y: Tensor, x: LassoContext) -> Tensor:
        r"""``(B,)`` normalized MSE to the true codes in dB:
        :math:`10 \log_{10} \|y - y_\text{true}\|^2 / \|y_\text{true}\|^2`."""
        err = ((y - x.codes) ** 2).sum(-1)
        return 10 * torch.log10(err / (x.codes**2).sum(-1).clamp_min(1e-30))

    def check_context(self, x):
        if not isinstance(x, LassoContext):
            raise ValueError(f"Lasso expects a LassoContext, got {type(x).__name__}")
        if x.measurements.shape[-1] != self.n_measurements:
            raise ValueError(
                f"measurements must have shape (B, {self.n_measurements}), got {tuple(x.measurements.shape)}"
            )
