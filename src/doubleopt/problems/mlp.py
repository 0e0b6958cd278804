r"""A small MLP classifier whose flattened parameters are ``y``: a batch of B networks trained at once.

For instance ``i`` with parameters :math:`y_i = (W_1, b_1, \dots, W_L, b_L)` and minibatch
:math:`(u_{ij}, c_{ij})_{j \le N}` the objective is the mean cross-entropy
:math:`f(y_i) = -\frac1N \sum_j \log \mathrm{softmax}(\mathrm{MLP}_{y_i}(u_{ij}))_{c_{ij}}`.
All B networks are evaluated with batched matrix products (no loop over instances).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .._problem import ProblemFamily
from ._data import load_dataset, sample_rows

_ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": F.relu, "tanh": torch.tanh}


@dataclass
class ClassificationContext:
    """Contexts of :class:`MLPClassifier`: one minibatch per instance.

    Attributes:
        inputs: ``(B, N, d)`` the inputs of ``N`` examples.
        labels: ``(B, N)`` their int64 class indices.
    """

    inputs: Tensor  # (B, N, d)
    labels: Tensor  # (B, N) int64 class indices


class MLPClassifier(ProblemFamily):
    """MLP classifier family (the optimizee of Andrychowicz et al. 2016 by default: digits, one hidden
    layer of 20 sigmoid units, minibatches of 128).

    Args:
        hidden: hidden layer widths.
        activation: ``"sigmoid"``, ``"relu"`` or ``"tanh"``.
        dataset: ``"digits"`` (scikit-learn, 64 inputs, 10 classes) or ``"synthetic"`` (Gaussian blobs).
        split: ``"train"``, ``"test"`` or ``"all"`` rows of the dataset to draw minibatches from.
        n_points: minibatch size per instance.
        init_seed: seed of the default parameter initialization in :meth:`init`.

    Example:
        >>> import doubleopt as do
        >>> fam = do.problems.MLPClassifier(hidden=(20,))
        >>> x = fam.sample(4, seed=0)
        >>> sol = do.solve(fam, do.Adam(lr=0.03), x, max_steps=100, throw=False)
        >>> bool((sol.value < fam.objective(fam.init(x), x)).all())
        True
    """

    def __init__(
        self,
        hidden: tuple[int, ...] = (20,),
        activation: str = "sigmoid",
        dataset: str = "digits",
        split: str = "train",
        n_points: int = 128,
        n_inputs: int = 10,
        n_classes: int = 3,
        init_seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if dataset == "digits":
            X, t = load_dataset("digits", split, dtype=dtype)
            self.register_buffer("data_inputs", X, persistent=False)
            self.register_buffer("data_labels", t, persistent=False)
            n_inputs, n_classes = 64, 10
        elif dataset != "synthetic":
            raise ValueError(f"dataset must be 'digits' or 'synthetic', got {dataset!r}")
        self.hidden, self.activation, self.dataset, self.split = tuple(hidden), activation, dataset, split
        self.n_points, self.n_inputs, self.n_classes, self.init_seed, self.dtype = (
            n_points,
            n_inputs,
            n_classes,
            init_seed,
            dtype,
        )
        sizes = [n_inputs, *self.hidden, n_classes]
        self.layer_shapes = [(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)]
        self.dim = sum(a * b + b for a, b in self.layer_shapes)

    def unflatten(self, y: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Split ``(B, n)`` parameters into per-layer ``(W (B, in, out), b (B, out))`` views."""
        out, k = [], 0
        for a, b in self.layer_shapes:
            W = y[:, k : k + a * b].reshape(-1, a, b)
            k += a * b
            out.append((W, y[:, k : k + b]))
            k += b
        return out

    def logits(self, y: Tensor, inputs: Tensor) -> Tensor:
        """``(B, N, classes)`` logits of each instance's network on its inputs ``(B, N, d)``."""
        act = _ACTIVATIONS[self.activation]
        h = inputs
        layers = self.unflatten(y)
        for i, (W, b) in enumerate(layers):
            h = torch.baddbmm(b[:, None, :], h, W)
            if i < len(layers) - 1:
                h = act(h)
        return h

    def objective(self, y, x):
        z = self.logits(y, x.inputs)
        return (
            F.cross_entropy(z.reshape(-1, z.shape[-1]), x.labels.reshape(-1), reduction="none")
            .reshape(z.shape[:2])
            .mean(-1)
        )

    def accuracy(self, y: Tensor, x: ClassificationContext) -> Tensor:
        """``(B,)`` fraction of correctly classified points."""
        return (self.logits(y, x.inputs).argmax(-1) == x.labels).to(y.dtype).mean(-1)

    def init(self, x, generator: torch.Generator | None = None):
        """Glorot-uniform weights, zero biases; seeded by ``init_seed`` unless a generator is given."""
        B = x.inputs.shape[0]
        g = generator if generator is not None else torch.Generator().manual_seed(self.init_seed)
        parts = []
        for a, b in self.layer_shapes:
            bound = math.sqrt(6.0 / (a + b))
            parts.append((2 * torch.rand(B, a * b, generator=g, dtype=torch.float64) - 1) * bound)
            parts.append(torch.zeros(B, b, dtype=torch.float64))
        return torch.cat(parts, dim=-1).to(device=x.inputs.device, dtype=x.inputs.dtype)

    def _sample(self, batch_size, generator):
        if self.dataset == "digits":
            idx = sample_rows(self.data_inputs.shape[0], batch_size, self.n_points, generator)
            return ClassificationContext(self.data_inputs[idx], self.data_labels[idx])
        centers = 2.0 * torch.randn(batch_size, self.n_classes, self.n_inputs, generator=generator, dtype=torch.float64)
        labels = torch.randint(self.n_classes, (batch_size, self.n_points), generator=generator)
        inputs = torch.gather(centers, 1, labels[..., None].expand(-1, -1, self.n_inputs))
        inputs = inputs + torch.randn(
            batch_size, self.n_points, self.n_inputs, generator=generator, dtype=torch.float64
        )
        return ClassificationContext(inputs.to(self.dtype), labels)

    def check_context(self, x):
        if not isinstance(x, ClassificationContext):
            raise ValueError(f"MLPClassifier expects a ClassificationContext, got {type(x).__name__}")
        if x.inputs.dim() != 3 or x.inputs.shape[-1] != self.n_inputs:
            raise ValueError(f"MLPClassifier expects inputs (B, N, {self.n_inputs}), got {tuple(x.inputs.shape)}")
        if x.labels.shape != x.inputs.shape[:2] or x.labels.dtype != torch.int64:
            raise ValueError(
                f"labels must be int64 of shape {tuple(x.inputs.shape[:2])}, "
                f"got {x.labels.dtype} {tuple(x.labels.shape)}"
            )
