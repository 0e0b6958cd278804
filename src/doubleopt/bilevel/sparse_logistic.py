r"""Problem 3 of bilevel optimization (the scale case): sparse binary logistic regression with one L2 weight
per feature.

Inner problem (``d`` features, ``N`` training points, labels :math:`c_j \in \{0, 1\}`, ``y = w``):

.. math:: f(w; \lambda) = \frac1N \sum_{j=1}^N \big(\log(1 + e^{m_j}) - c_j m_j\big)
   + \frac12 \sum_{i=1}^{d} e^{\lambda_i} w_i^2, \qquad m = A w,

with one log L2 weight :math:`\lambda_i` per feature (``per_feature=True``: ``d`` hyperparameters) or one
global weight. The log parametrization keeps every weight :math:`e^{\lambda_i}` positive. The outer loss is
the validation logistic loss of :math:`w^*(\lambda)` (:meth:`SparseLogisticL2.logistic_loss`).

The gradient is analytic (:meth:`SparseLogisticL2.smooth_value_and_grad`),

.. math:: \nabla_w f = \frac1N A^\top\big(\sigma(A w) - c\big) + e^{\lambda} \odot w,

written in differentiable torch operations: it saves the objective's backward pass in every solver step.
A Hessian-vector product (what ``do.Implicit`` with CG, ``do.Neumann`` and the unrolled adjoints spend their
time on) costs one product with :math:`A` and one with :math:`A^\top` with either gradient. With the
``"sparse"`` layout both are CSR sparse-dense products with a stored transpose (:class:`FeatureMatrix`):
``torch``'s own backward of a CSR product re-derives the transpose on every call, many times slower than the
stored one. The ``"dense"`` layout keeps a ``(B, N, d)`` tensor and uses ``bmm``; the study
``doubleopt bench bilevel`` times one Hessian-vector product in each layout.

Data (:func:`sparse_logistic_split`): seeded synthetic rows with ``density * d`` non-zero standard normal
entries each, a sparse ground-truth weight vector with ``n_informative`` non-zeros, and labels
:math:`c_j = [a_j^\top w_{\mathrm{true}} + \varepsilon_j > 0]` with Gaussian noise :math:`\varepsilon_j`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._problem import Problem

LAYOUTS = ("sparse", "dense")


class _StoredTransposeMatmul(torch.autograd.Function):
    """``A @ v`` for a 2-D sparse ``A`` whose transpose ``At`` is stored; backward ``At @ u`` (the same function
    with the roles swapped, so it is differentiable any number of times)."""

    @staticmethod
    def forward(ctx, v, A, At):
        ctx.A, ctx.At = A, At
        return A @ v

    @staticmethod
    def backward(ctx, u):
        return _StoredTransposeMatmul.apply(u, ctx.At, ctx.A), None, None


class FeatureMatrix:
    """A batch of ``B`` feature matrices ``(N, d)``: constant data, stored ``"sparse"`` or ``"dense"``.

    ``"sparse"``: one block-diagonal CSR matrix ``(B N, B d)`` and its transpose, so that the products of all
    instances are one sparse-dense product each. ``"dense"``: a ``(B, N, d)`` tensor (``bmm``).
    The matrix is data, not a tensor leaf of the context: adjoints do not differentiate it and loop
    compaction (which no solver used here performs) would not index it.

    Args:
        indices: ``(3, nnz)`` integer tensor of (instance, row, column) positions.
        values: ``(nnz,)`` floating values (duplicates are summed).
        shape: ``(B, N, d)``.
        layout: ``"sparse"`` or ``"dense"``.
    """

    def __init__(self, indices: Tensor, values: Tensor, shape: tuple[int, int, int], layout: str = "sparse"):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if len(shape) != 3 or any(int(s) < 1 for s in shape):
            raise ValueError(f"shape must be (B, N, d) with positive sizes, got {tuple(shape)}")
        if not values.is_floating_point():
            raise ValueError(f"values must be floating point, got {values.dtype}")
        if indices.dim() != 2 or indices.shape[0] != 3 or values.shape != (indices.shape[1],):
            raise ValueError(
                f"indices must be (3, nnz) and values (nnz,), got {tuple(indices.shape)} and {tuple(values.shape)}"
            )
        B, N, d = (int(s) for s in shape)
        if indices.numel() and (bool((indices < 0).any()) or bool((indices.amax(1) >= torch.tensor([B, N, d])).any())):
            raise ValueError(f"indices out of range for shape {(B, N, d)}")
        self.shape, self.layout, self.dtype = (B, N, d), layout, values.dtype
        b, i, j = indices
        if layout == "dense":
            dense = torch.zeros(B, N, d, dtype=values.dtype)
            dense.index_put_((b, i, j), values, accumulate=True)
            self.dense, self.A, self.At = dense, None, None
        else:
            rows, cols = b * N + i, b * d + j
            self.dense = None
            self.A = _csr(rows, cols, values, (B * N, B * d))
            self.At = _csr(cols, rows, values, (B * d, B * N))

    @classmethod
    def from_dense(cls, X: Tensor, layout: str = "sparse") -> FeatureMatrix:
        """From a dense ``(B, N, d)`` tensor (its non-zero entries)."""
        if X.dim() != 3:
            raise ValueError(f"X must have shape (B, N, d), got {tuple(X.shape)}")
        idx = X.nonzero().T
        return cls(idx, X[tuple(idx)], tuple(X.shape), layout)

    def matvec(self, w: Tensor) -> Tensor:
        """``(B, d) -> (B, N)``: ``A_b w_b`` per instance (differentiable in ``w``)."""
        B, N, d = self.shape
        if self.dense is not None:
            return torch.bmm(self.dense, w[..., None])[..., 0]
        return _StoredTransposeMatmul.apply(w.reshape(B * d, 1), self.A, self.At).reshape(B, N)

    def rmatvec(self, r: Tensor) -> Tensor:
        """``(B, N) -> (B, d)``: ``A_b^T r_b`` per instance (differentiable in ``r``)."""
        B, N, d = self.shape
        if self.dense is not None:
            return torch.bmm(r[:, None, :], self.dense)[:, 0]
        return _StoredTransposeMatmul.apply(r.reshape(B * N, 1), self.At, self.A).reshape(B, d)

    def to_dense(self) -> Tensor:
        """The ``(B, N, d)`` dense tensor (for tests and small instances)."""
        if self.dense is not None:
            return self.dense
        B, N, d = self.shape
        blocks = self.A.to_dense().reshape(B, N, B, d)
        return blocks[torch.arange(B), :, torch.arange(B)]

    def nnz(self) -> int:
        return int(self.A.values().numel()) if self.A is not None else int((self.dense != 0).sum())


def _csr(rows: Tensor, cols: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    # indices were range-checked by FeatureMatrix, so torch's invariant checks are off (explicitly)
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, size, check_invariants=False).coalesce()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return coo.to_sparse_csr()


@dataclass
class SparseLogisticData:
    """A batch of binary classification sets: ``features`` (a :class:`FeatureMatrix`, ``(B, N, d)``) and
    ``labels`` ``(B, N)`` in {0, 1} (float, the dtype of the features)."""

    labels: Tensor
    features: FeatureMatrix


def sparse_logistic_split(
    n_features: int = 10_000,
    n_train: int = 2000,
    n_val: int = 1000,
    *,
    density: float = 0.01,
    n_informative: int = 100,
    noise: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    layout: str = "sparse",
) -> tuple[SparseLogisticData, SparseLogisticData, Tensor]:
    """Seeded synthetic train and validation sets (batch size 1 each) and the ground-truth weights ``(d,)``.

    Every row has ``max(1, round(density * n_features))`` non-zero standard normal entries at uniformly drawn
    columns (a column drawn twice in a row sums its entries); ``n_informative`` columns carry standard normal
    true weights; labels are ``[a^T w_true + noise * eps > 0]`` with ``eps ~ N(0, s^2)`` where ``s`` is the
    standard deviation of ``a^T w_true`` over the rows (so ``noise`` is relative to the signal).
    """
    for name, v in (("n_features", n_features), ("n_train", n_train), ("n_val", n_val)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not (0 < density <= 1):
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    if isinstance(n_informative, bool) or not isinstance(n_informative, int) or not 1 <= n_informative <= n_features:
        raise ValueError(f"n_informative must be an integer in [1, n_features={n_features}], got {n_informative!r}")
    if not (noise >= 0) or not math.isfinite(noise):
        raise ValueError(f"noise must be finite and >= 0, got {noise!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    g = torch.Generator().manual_seed(seed)
    d, n = n_features, n_train + n_val
    per_row = max(1, round(density * d))
    cols = torch.randint(d, (n, per_row), generator=g)
    vals = torch.randn(n, per_row, generator=g, dtype=dtype)
    w_true = torch.zeros(d, dtype=dtype)
    support = torch.randperm(d, generator=g)[:n_informative]
    w_true[support] = torch.randn(n_informative, generator=g, dtype=dtype)
    signal = (vals * w_true[cols]).sum(-1)
    scale = signal.std() if n > 1 and float(signal.std()) > 0 else torch.ones((), dtype=dtype)
    labels = (signal + noise * scale * torch.randn(n, generator=g, dtype=dtype) > 0).to(dtype)

    def part(lo: int, hi: int) -> SparseLogisticData:
        rows = torch.arange(hi - lo)[:, None].expand(-1, per_row).reshape(-1)
        idx = torch.stack([torch.zeros_like(rows), rows, cols[lo:hi].reshape(-1)])
        feats = FeatureMatrix(idx, vals[lo:hi].reshape(-1), (1, hi - lo, d), layout)
        return SparseLogisticData(labels[lo:hi][None], feats)

    return part(0, n_train), part(n_train, n), w_true


class SparseLogisticL2(Problem):
    """Binary logistic regression with log-parametrized L2 weights (see the module docstring).

    Args:
        n_features: ``d`` (the size of ``y``).
        per_feature: one weight per feature (``d`` hyperparameters) or a single global weight.
        log_l2: initial value of every :math:`\\lambda_i`.
        dtype: dtype of the hyperparameters (the features must have the same dtype).

    Example:
        >>> import torch, doubleopt as do
        >>> from doubleopt.bilevel.sparse_logistic import SparseLogisticL2, sparse_logistic_split
        >>> train, val, _ = sparse_logistic_split(200, 100, 50, density=0.05, n_informative=10)
        >>> prob = SparseLogisticL2(200, log_l2=-4.0)
        >>> sol = do.solve(prob, do.LBFGS(), train, tol=1e-9, max_steps=500)
        >>> prob.logistic_loss(sol.y, val).backward()
        >>> prob.log_l2.grad.shape
        torch.Size([200])
    """

    def __init__(
        self, n_features: int, *, per_feature: bool = True, log_l2: float = -8.0, dtype: torch.dtype = torch.float64
    ):
        super().__init__()
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise ValueError(f"n_features must be an integer >= 1, got {n_features!r}")
        if not math.isfinite(float(log_l2)):
            raise ValueError(f"log_l2 must be finite, got {log_l2!r}")
        self.dim = n_features
        self.log_l2 = nn.Parameter(torch.full((n_features if per_feature else 1,), float(log_l2), dtype=dtype))

    def margins(self, y: Tensor, x: SparseLogisticData) -> Tensor:
        """``A w`` per instance, ``(B, N)``."""
        return x.features.matvec(y)

    def logistic_loss(self, y: Tensor, x: SparseLogisticData) -> Tensor:
        """Mean logistic loss of the weights ``y`` on ``x`` (a scalar, averaged over the batch too)."""
        m = self.margins(y, x)
        return (nn.functional.softplus(m) - x.labels * m).mean()

    def accuracy(self, y: Tensor, x: SparseLogisticData) -> float:
        """Fraction of points classified correctly (over the whole batch)."""
        with torch.no_grad():
            return float(((self.margins(y, x) > 0).to(x.labels.dtype) == x.labels).to(torch.float64).mean())

    def objective(self, y: Tensor, x: SparseLogisticData) -> Tensor:
        m = self.margins(y, x)
        data = (nn.functional.softplus(m) - x.labels * m).mean(-1)
        return data + 0.5 * (self.log_l2.exp() * y * y).sum(-1)

    def smooth_value_and_grad(self, y: Tensor, x: SparseLogisticData) -> tuple[Tensor, Tensor]:
        """Value and analytic gradient (differentiable torch operations; one product with ``A`` and one with
        ``A^T``)."""
        m = self.margins(y, x)
        weights = self.log_l2.exp()
        value = (nn.functional.softplus(m) - x.labels * m).mean(-1) + 0.5 * (weights * y * y).sum(-1)
        residual = (torch.sigmoid(m) - x.labels) / m.shape[-1]
        grad = x.features.rmatvec(residual) + weights * y
        return value, grad

    def check_context(self, x):
        if not isinstance(x, SparseLogisticData):
            raise ValueError(f"SparseLogisticL2 expects a SparseLogisticData, got {type(x).__name__}")
        if not isinstance(x.features, FeatureMatrix):
            raise ValueError(f"features must be a FeatureMatrix, got {type(x.features).__name__}")
        B, N, d = x.features.shape
        if d != self.dim:
            raise ValueError(f"features have {d} columns, the problem has n_features={self.dim}")
        if x.labels.shape != (B, N):
            raise ValueError(f"labels must have shape (B, N) = {(B, N)}, got {tuple(x.labels.shape)}")
        if x.features.dtype != self.log_l2.dtype or x.labels.dtype != self.log_l2.dtype:
            raise ValueError(
                f"features ({x.features.dtype}) and labels ({x.labels.dtype}) must have the problem's dtype "
                f"({self.log_l2.dtype})"
            )
        if not bool(((x.labels == 0) | (x.labels == 1)).all()):
            raise ValueError("labels must be 0 or 1")
