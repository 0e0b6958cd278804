r"""Proximal gradient methods for composite problems :math:`f(y) = s(y) + g(y)`.

ISTA: :math:`y_{k+1} = \mathrm{prox}_{t g}(y_k - t \nabla s(y_k))`.
FISTA (Beck & Teboulle 2009): the same step from the extrapolated point
:math:`z_k = y_k + \frac{\theta_{k-1} - 1}{\theta_k}(y_k - y_{k-1})`,
:math:`\theta_{k+1} = (1 + \sqrt{1 + 4\theta_k^2}) / 2`.

The step :math:`t = 1/L` comes from, in order: ``step_size`` if given, the problem's
``lipschitz_constant(x)`` if it has one, or per-instance backtracking on the sufficient-decrease
condition :math:`s(y^+) \le s(z) + \nabla s(z)^\top (y^+ - z) + \tfrac{L}{2}\|y^+ - z\|^2` (doubling L).
The stationarity measure is the norm of the gradient mapping :math:`\|z - y^+\| / t`.

Example:
    >>> import torch, doubleopt as do
    >>> fam = do.problems.Lasso(n_measurements=20, n_atoms=40, lam=0.1)
    >>> x = fam.sample(4, seed=0)
    >>> sol = do.solve(fam, do.FISTA(), x, max_steps=5000, tol=1e-6)
    >>> bool(sol.successful.all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._base import Solver


@dataclass
class ProxState:
    value: Tensor  # full objective s + g at y
    grad: Tensor  # gradient mapping at the point the last step was taken from
    smooth_grad: Tensor  # grad s at y (ISTA; FISTA keeps the initial one: it steps from z, not y)
    smooth_value: Tensor  # s at y
    lipschitz: Tensor  # (B,)
    y_prev: Tensor
    theta: Tensor  # (B,)


@dataclass(frozen=True)
class ISTA(Solver):
    """Proximal gradient descent (ISTA). See the module docstring for the update and step rule."""

    step_size: float | None = None
    accelerated = False
    supports_composite = True
    supports_smooth = True

    def _lipschitz0(self, problem, y, x) -> Tensor:
        B = y.shape[0]
        if self.step_size is not None:
            if not self.step_size > 0:
                raise ValueError(f"step_size must be > 0, got {self.step_size}")
            return torch.full((B,), 1.0 / self.step_size, dtype=y.dtype, device=y.device)
        lip = problem.lipschitz_constant(x)
        if lip is not None:
            return torch.as_tensor(lip).to(y.dtype).expand(B).clone()
        return torch.ones(B, dtype=y.dtype, device=y.device)

    def _backtrack(self, problem, x) -> bool:
        return self.step_size is None and problem.lipschitz_constant(x) is None

    def init(self, problem, y, x):
        sv, sg = problem.value_and_grad(y, x)
        value = sv + problem.nonsmooth(y, x)
        B = y.shape[0]
        return ProxState(
            value,
            torch.full_like(y, float("inf")),
            sg,
            sv,
            self._lipschitz0(problem, y, x),
            y,
            torch.ones(B, dtype=y.dtype, device=y.device),
        )

    def step(self, problem, y, x, state):
        if self.accelerated:
            theta_next = (1 + torch.sqrt(1 + 4 * state.theta**2)) / 2
            z = y + ((state.theta - 1) / theta_next)[:, None] * (y - state.y_prev)
            sz, gz = problem.value_and_grad(z, x)
        else:
            theta_next = state.theta
            z, sz, gz = y, state.smooth_value, state.smooth_grad
        L = state.lipschitz
        y_new = _prox_step(problem, x, z, gz, L)
        if self._backtrack(problem, x):
            for _ in range(60):
                s_new = problem.smooth_value(y_new, x)
                diff = y_new - z
                bound = sz + (gz * diff).sum(-1) + 0.5 * L * (diff * diff).sum(-1)
                ok = s_new <= bound + 8 * torch.finfo(y.dtype).eps * sz.abs()
                if bool(ok.all()):
                    break
                L = torch.where(ok, L, 2 * L)
                y_new = torch.where(ok[:, None], y_new, _prox_step(problem, x, z, gz, L))
        if self.accelerated:  # the next step is taken from the extrapolated point: no gradient needed at y_new
            sv, sg = problem.smooth_value(y_new, x), state.smooth_grad
        else:
            sv, sg = problem.value_and_grad(y_new, x)
        value = sv + problem.nonsmooth(y_new, x)
        mapping = (z - y_new) * L[:, None]
        return y_new, ProxState(value, mapping, sg, sv, L, y, theta_next)


def _prox_step(problem, x, z: Tensor, gz: Tensor, L: Tensor) -> Tensor:
    step = 1.0 / L
    return problem.prox(z - step[:, None] * gz, x, step)


@dataclass(frozen=True)
class FISTA(ISTA):
    """Accelerated proximal gradient (FISTA). See the module docstring."""

    accelerated = True
