r"""Entropic optimal transport between discrete measures, as a batched problem on the dual potential.

For measures :math:`a \in \Delta_n`, :math:`b \in \Delta_m` on fixed supports with cost :math:`C \in
\mathbb{R}^{n \times m}` and regularization :math:`\varepsilon > 0`, the entropic OT dual is

.. math:: \max_{f, g}\ \langle f, a\rangle + \langle g, b\rangle
    - \varepsilon \sum_{ij} e^{(f_i + g_j - C_{ij})/\varepsilon} + \varepsilon .

Maximizing over :math:`g` in closed form (the soft :math:`c`-transform)

.. math:: g(f)_j = \varepsilon \log b_j - \varepsilon \log \sum_i e^{(f_i - C_{ij})/\varepsilon}

leaves a smooth concave function of :math:`f` alone. The problem minimizes its negative,

.. math:: F(f; a, b) = -\langle f, a\rangle - \langle g(f), b\rangle, \qquad
    \nabla F(f) = P(f)\mathbf{1} - a, \quad P_{ij} = e^{(f_i + g(f)_j - C_{ij})/\varepsilon},

so ``y = f`` has shape ``(B, n)``, the column marginal of :math:`P` is exact and the gradient is the row
marginal violation: :math:`\|\nabla F\|_1` is the marginal error that Sinkhorn's stopping rule (and the
:class:`~doubleopt.amortized.MarginalError` certificate) measure. Sinkhorn's algorithm
(:class:`~doubleopt.solvers.Sinkhorn`) is block-coordinate ascent on the dual; any smooth solver (L-BFGS)
also works on :math:`F`.

**Log-domain evaluation with matrix products.** The soft-min :math:`\log\sum_j e^{(g_j - C_{ij})/\varepsilon}`
is computed as
:math:`\log\big(e^{(g - \max g)/\varepsilon} K_\text{row}^\top\big)_i + (\max g - \min_j C_{ij})/\varepsilon`
with the shifted kernel :math:`K_\text{row} = e^{-(C - \min_j C_{ij})/\varepsilon}`, whose entries lie in
(0, 1] with a 1 in every row. The sum is then at least :math:`e^{-R/\varepsilon}` (R: the cost range), so it
is exact in float64 whenever :math:`R/\varepsilon \lesssim 700` and one batched matrix product replaces a
``(B, n, m)`` log-sum-exp. Instances whose sums underflow anyway fall back to the exact log-sum-exp, so the
result is always the log-domain one.

Families: :class:`DigitsOT` (pairs of scikit-learn 8x8 digit images as measures on the pixel grid in
[0, 1]^2, squared Euclidean cost, :math:`\varepsilon = 10^{-2}`, the Meta OT MNIST setting) and
:class:`SphereOT` (random mixtures of von Mises-Fisher bumps on a fixed Fibonacci grid of the sphere,
geodesic cost).

References:
    Cuturi, "Sinkhorn distances: lightspeed computation of optimal transport", NeurIPS 2013.
    Peyre & Cuturi, "Computational optimal transport", 2019 (log-domain Sinkhorn, semi-dual).
    Amos, Cohen, Luise & Redko, "Meta optimal transport", ICML 2023.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._problem import ProblemFamily
from ._data import load_dataset


@dataclass
class OTContext:
    """A batch of measure pairs: ``a`` ``(B, n)`` and ``b`` ``(B, m)``, positive, each row summing to 1."""

    a: Tensor
    b: Tensor


@dataclass
class DualEvaluation:
    """Everything one evaluation of the semi-dual at ``f`` produces (shared by the solver and the problem)."""

    value: Tensor  # (B,) F(f)
    grad: Tensor  # (B, n) P 1 - a
    g: Tensor  # (B, m) the c-transform g(f)
    lse_row: Tensor  # (B, n) log sum_j exp((g_j - C_ij) / eps), reused by the next Sinkhorn f-update


class EntropicOT(ProblemFamily):
    """Entropic OT on fixed supports with a shared cost matrix (see the module docstring).

    Args:
        cost: ``(n, m)`` cost matrix.
        eps: entropic regularization :math:`\\varepsilon > 0`.
        dtype: float64 (default) keeps the matrix-product path exact for :math:`R/\\varepsilon \\le 700`.

    Example:
        >>> import torch, doubleopt as do
        >>> C = torch.rand(5, 6, dtype=torch.float64)
        >>> fam = do.problems.EntropicOT(C, eps=0.1)
        >>> x = do.problems.OTContext(torch.full((2, 5), 0.2, dtype=torch.float64),
        ...                           torch.full((2, 6), 1 / 6, dtype=torch.float64))
        >>> sol = do.solve(fam, do.solvers.Sinkhorn(), x, tol=1e-8)
        >>> bool((fam.marginal_error(sol.y, x) <= 1e-8).all())
        True
    """

    def __init__(self, cost: Tensor, eps: float = 1e-2, dtype: torch.dtype = torch.float64):
        super().__init__()
        if cost.dim() != 2 or not torch.isfinite(cost).all():
            raise ValueError(f"cost must be a finite (n, m) matrix, got shape {tuple(cost.shape)}")
        if not 0 < eps < float("inf"):
            raise ValueError(f"eps must be > 0 and finite, got {eps}")
        C = cost.to(dtype)
        self.eps, self.dtype = float(eps), dtype
        self.n, self.m = C.shape
        self.dim = self.n
        row_min, col_min = C.min(dim=1).values, C.min(dim=0).values
        self.register_buffer("cost", C)
        self.register_buffer("row_min_eps", row_min / eps)
        self.register_buffer("col_min_eps", col_min / eps)
        self.register_buffer("kernel_row_t", torch.exp(-(C - row_min[:, None]) / eps).T.contiguous())  # (m, n)
        self.register_buffer("kernel_col", torch.exp(-(C - col_min[None, :]) / eps))  # (n, m)

    # ---- log-domain soft-min via shifted-kernel products ---------------------------------------
    def _softmin_ok(self, s: Tensor) -> bool:
        """Fast whole-batch check that no shifted-kernel sum underflowed or overflowed."""
        return bool((s.amin() > torch.finfo(s.dtype).tiny * 1e4) & (s.amax() < torch.finfo(s.dtype).max))

    def _fix_rows(self, s: Tensor, out: Tensor, exact_fn) -> Tensor:
        bad = ~((s > torch.finfo(s.dtype).tiny * 1e4).all(-1) & torch.isfinite(out).all(-1))
        if bool(bad.any()):
            out = out.index_put((bad.nonzero().flatten(),), exact_fn(bad))
        return out

    def lse_rows(self, g: Tensor) -> Tensor:
        """``(B, n)``: :math:`\\log \\sum_j e^{(g_j - C_{ij})/\\varepsilon}`."""
        ge = g * (1.0 / self.eps)
        gmax = ge.detach().amax(dim=-1, keepdim=True)
        s = torch.exp(ge - gmax) @ self.kernel_row_t
        out = torch.log(s) + (gmax - self.row_min_eps)
        if self._softmin_ok(s):
            return out
        return self._fix_rows(s, out, lambda bad: torch.logsumexp((g[bad][:, None, :] - self.cost) / self.eps, -1))

    def lse_cols(self, f: Tensor) -> Tensor:
        """``(B, m)``: :math:`\\log \\sum_i e^{(f_i - C_{ij})/\\varepsilon}`."""
        fe = f * (1.0 / self.eps)
        fmax = fe.detach().amax(dim=-1, keepdim=True)
        s = torch.exp(fe - fmax) @ self.kernel_col
        out = torch.log(s) + (fmax - self.col_min_eps)
        if self._softmin_ok(s):
            return out
        return self._fix_rows(s, out, lambda bad: torch.logsumexp((f[bad][:, :, None] - self.cost) / self.eps, -2))

    # ---- the semi-dual -------------------------------------------------------------------------
    def c_transform(self, f: Tensor, x: OTContext) -> Tensor:
        """The optimal ``g`` for ``f``:
        :math:`g_j = \\varepsilon \\log b_j - \\varepsilon \\log\\sum_i e^{(f_i - C_{ij})/\\varepsilon}`."""
        return self.eps * (torch.log(x.b) - self.lse_cols(f))

    def evaluate(self, f: Tensor, x: OTContext) -> DualEvaluation:
        """Value, gradient, ``g(f)`` and the row log-sums at ``f`` (two soft-min passes)."""
        g = self.c_transform(f, x)
        lse_row = self.lse_rows(g)
        row_mass = torch.exp(f / self.eps + lse_row)
        value = -(f * x.a).sum(-1) - (g * x.b).sum(-1)
        return DualEvaluation(value, row_mass - x.a, g, lse_row)

    def objective(self, y: Tensor, x: OTContext) -> Tensor:
        g = self.c_transform(y, x)
        return -(y * x.a).sum(-1) - (g * x.b).sum(-1)

    def smooth_value_and_grad(self, y, x):
        ev = self.evaluate(y, x)
        return ev.value, ev.grad

    def marginal_error(self, f: Tensor, x: OTContext) -> Tensor:
        """``(B,)`` :math:`\\|P\\mathbf{1} - a\\|_1 + \\|P^\\top\\mathbf{1} - b\\|_1` with :math:`g = g(f)`
        (the second term is zero up to rounding)."""
        return self.evaluate(f, x).grad.abs().sum(-1)

    def plan(self, f: Tensor, x: OTContext) -> Tensor:
        """``(B, n, m)`` transport plans :math:`P(f)`."""
        g = self.c_transform(f, x)
        return torch.exp((f[:, :, None] + g[:, None, :] - self.cost) / self.eps)

    def transport_cost(self, f: Tensor, x: OTContext) -> Tensor:
        """``(B,)`` :math:`\\langle P(f), C\\rangle`."""
        return (self.plan(f, x) * self.cost).sum((-1, -2))

    def init(self, x):
        return torch.zeros(x.a.shape[0], self.n, dtype=x.a.dtype, device=x.a.device)

    def check_context(self, x):
        if not isinstance(x, OTContext):
            raise ValueError(f"{type(self).__name__} expects an OTContext(a, b), got {type(x).__name__}")
        a, b = x.a, x.b
        if a.dim() != 2 or a.shape[1] != self.n or b.dim() != 2 or b.shape[1] != self.m or a.shape[0] != b.shape[0]:
            raise ValueError(
                f"expected a of shape (B, {self.n}) and b of shape (B, {self.m}), "
                f"got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        for name, t in (("a", a), ("b", b)):
            if t.dtype != self.cost.dtype:
                raise ValueError(
                    f"measure {name} is {t.dtype} but {type(self).__name__} computes in {self.cost.dtype} (its cost "
                    f"matrix); convert the context (e.g. OTContext(a.to({self.cost.dtype}), b.to(...))) or build "
                    f"the family with dtype={t.dtype}"
                )
            finite = torch.isfinite(t).all(-1)
            nonpos = finite & ~(t > 0).all(-1)
            if bool(nonpos.any()):
                idx = nonpos.nonzero().flatten().tolist()
                raise ValueError(
                    f"measure {name} must be strictly positive (log-domain Sinkhorn takes log {name}); "
                    f"instances {idx[:10]} have entries <= 0: add a small floor and renormalize"
                )
            off = finite & ((t.sum(-1) - 1).abs() > 1e-4)
            if bool(off.any()):
                idx = off.nonzero().flatten().tolist()
                raise ValueError(
                    f"measure {name} must sum to 1; instances {idx[:10]} sum to {t.sum(-1)[off][:3].tolist()}"
                )


def grid_points(side: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(side^2, 2)`` pixel centres of a ``side x side`` image in [0, 1]^2 (row-major, as images flatten)."""
    t = torch.linspace(0, 1, side, dtype=dtype)
    rr, cc = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([rr.flatten(), cc.flatten()], dim=-1)


class DigitsOT(EntropicOT):
    """Pairs of scikit-learn 8x8 digits as measures on the pixel grid (the Meta OT MNIST task, at 8x8).

    ``a = (image + floor) / sum``; squared Euclidean cost between pixel centres in [0, 1]^2;
    :math:`\\varepsilon = 10^{-2}` as in Meta OT. ``split`` picks the fixed train/test split of
    :func:`~doubleopt.problems.load_dataset`, so models trained on ``"train"`` pairs are evaluated on held-out
    ``"test"`` images.

    Example:
        >>> import doubleopt as do
        >>> fam = do.problems.DigitsOT(split="test")
        >>> x = fam.sample(3, seed=0)
        >>> x.a.shape, round(float(x.a.sum(-1)[0]), 12)
        (torch.Size([3, 64]), 1.0)
    """

    def __init__(
        self, split: str = "train", eps: float = 1e-2, floor: float = 1e-2, dtype: torch.dtype = torch.float64
    ):
        pts = grid_points(8, torch.float64)
        super().__init__(torch.cdist(pts, pts) ** 2, eps=eps, dtype=dtype)
        images, labels = load_dataset("digits", split, dtype=torch.float64)
        if not floor > 0:
            raise ValueError(f"floor must be > 0 (the measures must be positive), got {floor}")
        m = images + floor
        self.register_buffer("measures", (m / m.sum(-1, keepdim=True)).to(dtype))
        self.register_buffer("labels", labels)
        self.split, self.floor = split, floor

    def _sample(self, batch_size, generator):
        N = self.measures.shape[0]
        i = torch.randint(N, (batch_size,), generator=generator)
        j = torch.randint(N, (batch_size,), generator=generator)
        return OTContext(self.measures[i].clone(), self.measures[j].clone())


def fibonacci_sphere(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(n, 3)`` nearly uniform points on the unit sphere (Fibonacci lattice)."""
    k = torch.arange(n, dtype=dtype) + 0.5
    z = 1 - 2 * k / n
    r = torch.sqrt(1 - z * z)
    phi = math.pi * (3 - math.sqrt(5)) * k
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


class SphereOT(EntropicOT):
    """Random measures on the sphere: mixtures of von Mises-Fisher bumps on a fixed Fibonacci grid.

    Each measure is :math:`\\propto \\text{floor} + \\sum_k w_k e^{\\kappa_k(\\langle s, \\mu_k\\rangle - 1)}`
    with ``n_bumps`` random centres :math:`\\mu_k`, concentrations :math:`\\kappa_k \\in` ``kappa_range``
    and Dirichlet weights. The cost is the geodesic distance :math:`\\arccos\\langle s_i, s_j\\rangle`.

    Example:
        >>> import doubleopt as do
        >>> fam = do.problems.SphereOT(n_points=50)
        >>> fam.sample(4, seed=0).b.shape
        torch.Size([4, 50])
    """

    def __init__(
        self,
        n_points: int = 100,
        n_bumps: int = 3,
        kappa_range: tuple[float, float] = (5.0, 30.0),
        eps: float = 1e-2,
        floor: float = 1e-2,
        dtype: torch.dtype = torch.float64,
    ):
        pts = fibonacci_sphere(n_points)
        cost = torch.arccos((pts @ pts.T).clamp(-1, 1))
        super().__init__(cost, eps=eps, dtype=dtype)
        self.register_buffer("points", pts.to(dtype))
        self.n_bumps, self.kappa_range, self.floor = n_bumps, kappa_range, floor

    def _measure(self, batch_size: int, generator: torch.Generator) -> Tensor:
        K = self.n_bumps
        mu = torch.randn(batch_size, K, 3, generator=generator, dtype=torch.float64)
        mu = mu / mu.norm(dim=-1, keepdim=True)
        lo, hi = self.kappa_range
        kappa = lo + (hi - lo) * torch.rand(batch_size, K, 1, generator=generator, dtype=torch.float64)
        w = -torch.log(torch.rand(batch_size, K, 1, generator=generator, dtype=torch.float64))
        w = w / w.sum(1, keepdim=True)
        dens = (w * torch.exp(kappa * (mu @ self.points.to(torch.float64).T - 1))).sum(1)
        dens = dens / dens.max(dim=-1, keepdim=True).values + self.floor
        return (dens / dens.sum(-1, keepdim=True)).to(self.dtype)

    def _sample(self, batch_size, generator):
        return OTContext(self._measure(batch_size, generator), self._measure(batch_size, generator))
