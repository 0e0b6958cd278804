"""One seeding call for a study: every global random source from one seed.

A study seeds at the top of its ``main`` (its "seeds" block): :func:`seed_all` for the global generators
(Python's ``random``, NumPy's legacy global state, torch's CPU and CUDA generators), then it builds each explicit
``torch.Generator`` / ``numpy.random.Generator`` it needs from the same ``--seed`` with :func:`generator`,
documenting which offset feeds what. No study calls ``torch.manual_seed`` anywhere else.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_all(seed: int) -> int:
    """Seed Python's ``random``, NumPy's global state and torch's global generators (CPU and every CUDA device).

    Args:
        seed: an integer in ``[0, 2**32)`` (NumPy's limit).

    Raises:
        ValueError: ``seed`` is not such an integer.

    Example:
        >>> a = (seed_all(3), torch.rand(2))[1]
        >>> b = (seed_all(3), torch.rand(2))[1]
        >>> bool((a == b).all())
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return int(seed)


def generator(seed: int) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded with ``seed`` (a study's derived stream: ``generator(args.seed + k)``).

    Example:
        >>> bool((torch.rand(2, generator=generator(5)) == torch.rand(2, generator=generator(5))).all())
        True
    """
    return torch.Generator().manual_seed(int(seed))
