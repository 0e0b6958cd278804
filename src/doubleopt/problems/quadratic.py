r"""Random convex quadratics :math:`f(y; A, b) = \tfrac12 y^\top A y - b^\top y` with a chosen condition number."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._problem import ProblemFamily


@dataclass
class QuadraticContext:
    """Contexts of :class:`Quadratic` (a batch, one row per instance).

    Attributes:
        A: ``(B, n, n)`` symmetric positive definite matrices.
        b: ``(B, n)`` linear terms.
    """

    A: Tensor  # (B, n, n) symmetric positive definite
    b: Tensor  # (B, n)


class Quadratic(ProblemFamily):
    r"""Convex quadratics :math:`\tfrac12 y^\top A y - b^\top y`.

    ``A = Q diag(lambda) Q^T`` with a Haar-random orthogonal ``Q`` and eigenvalues log-spaced in
    ``[1, condition_number]``; ``b ~ N(0, I)``. The minimizer is :math:`A^{-1} b` (:meth:`solution`).

    Example:
        >>> import doubleopt as do
        >>> fam = do.problems.Quadratic(dim=4, condition_number=100.0)
        >>> x = fam.sample(3, seed=0)
        >>> round(float(torch.linalg.cond(x.A[0].double())))
        100
    """

    def __init__(self, dim: int = 10, condition_number: float = 10.0, dtype: torch.dtype = torch.float32):
        super().__init__()
        if dim < 1 or condition_number < 1:
            raise ValueError(f"need dim >= 1 and condition_number >= 1, got {dim}, {condition_number}")
        self.dim = dim
        self.condition_number = float(condition_number)
        self.dtype = dtype

    def _sample(self, batch_size, generator):
        n = self.dim
        G = torch.randn(batch_size, n, n, generator=generator, dtype=torch.float64)
        Q, R = torch.linalg.qr(G)
        Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))[:, None, :]
        eig = torch.logspace(0, torch.log10(torch.tensor(self.condition_number)).item(), n, dtype=torch.float64)
        A = (Q * eig) @ Q.transpose(-1, -2)
        A = 0.5 * (A + A.transpose(-1, -2))
        b = torch.randn(batch_size, n, generator=generator, dtype=torch.float64)
        return QuadraticContext(A.to(self.dtype), b.to(self.dtype))

    def objective(self, y, x):
        return 0.5 * (y * (x.A @ y[..., None])[..., 0]).sum(-1) - (x.b * y).sum(-1)

    def smooth_value_and_grad(self, y, x):
        Ay = (x.A @ y[..., None])[..., 0]
        return 0.5 * (y * Ay).sum(-1) - (x.b * y).sum(-1), Ay - x.b

    def hessian(self, y, x):
        return x.A

    def solution(self, x: QuadraticContext) -> Tensor:
        """The exact minimizers :math:`A^{-1} b`."""
        return torch.linalg.solve(x.A, x.b)

    def check_context(self, x):
        if not isinstance(x, QuadraticContext):
            raise ValueError(f"Quadratic expects a QuadraticContext, got {type(x).__name__}")
        if not (x.A.is_floating_point() and x.b.is_floating_point()):
            raise ValueError(f"Quadratic expects floating-point A and b, got {x.A.dtype} and {x.b.dtype}")
        if x.A.shape[-2:] != (self.dim, self.dim) or x.b.shape[-1] != self.dim:
            raise ValueError(
                f"Quadratic(dim={self.dim}) expects A (B, {self.dim}, {self.dim}) and b (B, {self.dim}),"
                f" got {tuple(x.A.shape)} and {tuple(x.b.shape)}"
            )
