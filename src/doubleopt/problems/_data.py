"""Datasets that ship with scikit-learn (nothing is downloaded), standardized and split deterministically."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=8)
def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    if name == "digits":
        d = datasets.load_digits()
        return (d.data / 16.0).astype(np.float64), d.target.astype(np.int64)
    if name == "breast_cancer":
        d = datasets.load_breast_cancer()
        X = d.data.astype(np.float64)
        return (X - X.mean(0)) / X.std(0), d.target.astype(np.int64)
    if name == "iris":
        d = datasets.load_iris()
        X = d.data.astype(np.float64)
        return (X - X.mean(0)) / X.std(0), d.target.astype(np.int64)
    raise ValueError(f"unknown dataset {name!r}; choose digits, breast_cancer or iris")


def load_dataset(name: str, split: str = "all", *, test_fraction: float = 0.25, dtype=torch.float32):
    """``(inputs, labels)`` tensors of a scikit-learn dataset.

    The split is a fixed permutation (seed 0): ``"train"`` is the first ``1 - test_fraction``,
    ``"test"`` the rest, ``"all"`` everything. Digits are scaled to [0, 1]; other sets standardized.
    """
    X, t = _load(name)
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    if split != "all":
        perm = np.random.default_rng(0).permutation(len(X))
        n_test = int(round(test_fraction * len(X)))
        idx = perm[n_test:] if split == "train" else perm[:n_test]
        X, t = X[idx], t[idx]
    return torch.as_tensor(X, dtype=dtype), torch.as_tensor(t)


def sample_rows(n_rows: int, batch_size: int, n_points: int, generator: torch.Generator) -> torch.Tensor:
    """``(batch_size, n_points)`` row indices: each instance a random subset without replacement."""
    if n_points > n_rows:
        raise ValueError(f"n_points={n_points} exceeds the {n_rows} rows available")
    keys = torch.rand(batch_size, n_rows, generator=generator)
    return keys.argsort(dim=1)[:, :n_points]
