r"""``QPLayer``: a batched, differentiable QP as a network layer (OptNet, Amos & Kolter 2017).

The layer outputs :math:`z^*(\theta) = \arg\min_z \tfrac12 z^\top Q z + q^\top z` s.t.
:math:`Az = b,\ Gz \le h`.
Any of ``Q, q, A, b, G, h`` can be a learnable parameter of the layer, a fixed buffer, or an input of the
forward call (per instance, batch first, e.g. ``q`` computed by the previous layer). The backward pass is
the OptNet KKT adjoint (:mod:`doubleopt.solvers.qp`), reusing the forward factorization; pass
``adjoint=do.Unroll()`` to backpropagate through the interior-point iterations instead (for checking).

Failures never pass silently: with ``throw=False`` (the default for training) the per-instance result codes of
the last call are in ``layer.last_solution.result``; instances that did not succeed are reported by
``layer.last_solution.summary()``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .._solution import Solution
from ..solvers.qp import QP, qp_solve

_NAMES = ("Q", "q", "A", "b", "G", "h")


class QPLayer(nn.Module):
    r"""A differentiable QP layer.

    Args:
        Q: default ``Q``, shared ``(n, n)`` or per instance ``(B, n, n)``.
        q: default ``q``, ``(n,)`` or ``(B, n)``.
        A: default ``A``, ``(p, n)`` or ``(B, p, n)``; ``None`` with ``b``: no equality constraints unless
            given at call time.
        b: default ``b``, ``(p,)`` or ``(B, p)``.
        G: default ``G``, ``(m, n)`` or ``(B, m, n)``; ``None`` with ``h``: no inequality constraints unless
            given at call time.
        h: default ``h``, ``(m,)`` or ``(B, m)``.
        learnable: names among ``Q, q, A, b, G, h`` to register as ``nn.Parameter`` (the others are buffers).
        solver: a :class:`~doubleopt.solvers.QP` configuration.
        adjoint (AbstractAdjoint | None): ``None`` (the KKT adjoint, ``do.Implicit()``) or ``do.Unroll()``.
        max_steps: interior-point step budget.
        tol: KKT tolerance (default 1e-10, or 1e-4 when computing in float32).
        throw: raise :class:`~doubleopt.SolveError` if an instance fails (default ``False``: codes are kept in
            ``last_solution``).
        compute_dtype: dtype of the interior point (default float64 even for float32 layers, whose output
            and gradients are cast back; ``torch.float32`` iterates natively, accurate to ~1e-3 only).
        weakly_active: ``"tighten"`` (default), ``"mark"`` or ``"off"``: instances whose active set is ambiguous
            at ``tol`` (a constraint with slack and multiplier both small) are re-solved tighter, so their gradient
            agrees with a high-accuracy solve; those that stay ambiguous are marked in
            ``last_solution.stats["weakly_active"]`` (see :func:`~doubleopt.qp_solve`).

    Example:
        >>> import torch, doubleopt as do
        >>> n = 4
        >>> eye = torch.eye(n, dtype=torch.float64)
        >>> layer = do.layers.QPLayer(Q=eye, G=-eye, h=torch.zeros(n, dtype=torch.float64), learnable=("G",))
        >>> gen = torch.Generator().manual_seed(0)
        >>> x = torch.randn(8, n, dtype=torch.float64, generator=gen).requires_grad_()
        >>> z = layer(q=x)              # projection of -x onto the nonnegative orthant
        >>> bool(torch.allclose(z, (-x).clamp_min(0), atol=1e-6))
        True
        >>> z.sum().backward(); layer.G.grad.shape
        torch.Size([4, 4])
    """

    def __init__(self, Q: Tensor | None = None, q: Tensor | None = None, A: Tensor | None = None,
                 b: Tensor | None = None, G: Tensor | None = None, h: Tensor | None = None, *,
                 learnable: Iterable[str] = (), solver: QP | None = None, adjoint=None, max_steps: int = 50,
                 tol: float | None = None, throw: bool = False, compute_dtype: torch.dtype | None = None,
                 weakly_active: str = "tighten"):
        super().__init__()
        learnable = tuple(learnable)
        for name in learnable:
            if name not in _NAMES:
                raise ValueError(f"learnable names must be among {_NAMES}, got {name!r}")
        values = dict(zip(_NAMES, (Q, q, A, b, G, h)))
        for name, value in values.items():
            if value is None:
                if name in learnable:
                    raise ValueError(f"{name} is learnable but has no initial value")
                setattr(self, name, None)
            elif name in learnable:
                setattr(self, name, nn.Parameter(value.detach().clone()))
            else:
                self.register_buffer(name, value.detach().clone())
        self.solver = solver or QP()
        self.adjoint, self.max_steps, self.tol, self.throw = adjoint, max_steps, tol, throw
        self.compute_dtype = compute_dtype
        if weakly_active not in ("tighten", "mark", "off"):
            raise ValueError(f"weakly_active must be 'tighten', 'mark' or 'off', got {weakly_active!r}")
        self.weakly_active = weakly_active
        self.last_solution: Solution | None = None

    def forward(self, **inputs: Tensor) -> Tensor:
        """Solve with the layer's values, overridden by ``inputs`` (e.g. ``layer(q=features)``); returns z."""
        unknown = set(inputs) - set(_NAMES)
        if unknown:
            raise ValueError(f"QPLayer inputs must be among {_NAMES}, got {sorted(unknown)}")
        v = {name: inputs.get(name, getattr(self, name)) for name in _NAMES}
        if v["Q"] is None or v["q"] is None:
            raise ValueError("QPLayer needs Q and q (as layer values or inputs)")
        sol = qp_solve(v["Q"], v["q"], v["A"], v["b"], v["G"], v["h"], solver=self.solver,
                       adjoint=self.adjoint, max_steps=self.max_steps, tol=self.tol, throw=self.throw,
                       compute_dtype=self.compute_dtype, weakly_active=self.weakly_active)
        self.last_solution = sol
        return sol.y

    def extra_repr(self) -> str:
        learn = [n for n in _NAMES if isinstance(getattr(self, n), nn.Parameter)]
        return f"learnable={learn}, max_steps={self.max_steps}, tol={self.tol}"


