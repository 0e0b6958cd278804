r"""The Rosenbrock function in any dimension:
:math:`f(y) = \sum_{i=1}^{n-1} c\,(y_{i+1} - y_i^2)^2 + (1 - y_i)^2`, minimum 0 at :math:`y = \mathbf 1`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._problem import ProblemFamily


@dataclass
class RosenbrockContext:
    """Contexts of :class:`Rosenbrock` (a batch, one row per instance).

    Attributes:
        curvature: ``(B,)`` the coefficient ``c`` (100 in the classic function).
        start: ``(B, n)`` the starting points :meth:`Rosenbrock.init` returns.
    """

    curvature: Tensor  # (B,) the coefficient c (100 in the classic function)
    start: Tensor  # (B, n) the starting point used by init()


class Rosenbrock(ProblemFamily):
    """Rosenbrock family: contexts draw the curvature ``c`` in ``curvature_range`` and a start around
    the classic ``(-1.2, 1, -1.2, 1, ...)`` (uniform noise of half-width ``start_noise``).

    Example:
        >>> import doubleopt as do
        >>> fam = do.problems.Rosenbrock(dim=2)
        >>> x = fam.sample(4, seed=0)
        >>> sol = do.solve(fam, do.Newton(), x, max_steps=200, tol=1e-8)
        >>> bool(torch.allclose(sol.y, torch.ones(4, 2), atol=1e-4))
        True
    """

    def __init__(
        self,
        dim: int = 2,
        curvature_range: tuple[float, float] = (100.0, 100.0),
        start_noise: float = 0.2,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if dim < 2:
            raise ValueError(f"Rosenbrock needs dim >= 2, got {dim}")
        self.dim = dim
        self.curvature_range = curvature_range
        self.start_noise = start_noise
        self.dtype = dtype

    def _sample(self, batch_size, generator):
        lo, hi = self.curvature_range
        c = lo + (hi - lo) * torch.rand(batch_size, generator=generator, dtype=torch.float64)
        classic = torch.tensor([-1.2, 1.0], dtype=torch.float64).repeat(self.dim // 2 + 1)[: self.dim]
        noise = (2 * torch.rand(batch_size, self.dim, generator=generator, dtype=torch.float64) - 1) * self.start_noise
        return RosenbrockContext(c.to(self.dtype), (classic + noise).to(self.dtype))

    def objective(self, y, x):
        a, b = y[:, :-1], y[:, 1:]
        return (x.curvature[:, None] * (b - a * a) ** 2 + (1 - a) ** 2).sum(-1)

    def smooth_value_and_grad(self, y, x):
        a, b = y[:, :-1], y[:, 1:]
        c = x.curvature[:, None]
        r = b - a * a
        value = (c * r * r + (1 - a) ** 2).sum(-1)
        grad = torch.zeros_like(y)
        grad = grad + torch.nn.functional.pad(-4 * c * r * a - 2 * (1 - a), (0, 1))
        grad = grad + torch.nn.functional.pad(2 * c * r, (1, 0))
        return value, grad

    def init(self, x):
        return x.start.clone()

    def solution(self, x) -> Tensor:
        return torch.ones_like(x.start)

    def check_context(self, x):
        if not isinstance(x, RosenbrockContext):
            raise ValueError(f"Rosenbrock expects a RosenbrockContext, got {type(x).__name__}")
