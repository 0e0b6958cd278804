"""The studies' one seeding call: every global random source from one seed, bad seeds refused."""

import random

import numpy as np
import pytest
import torch

from doubleopt.bench import generator, seed_all


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seed_all_fixes_python_numpy_and_torch():
    seed_all(11)
    first = draws()
    seed_all(11)
    assert draws() == first
    seed_all(12)
    assert all(a != b for a, b in zip(draws(), first))


def test_generator_is_a_fresh_seeded_stream():
    a = torch.rand(3, generator=generator(4))
    torch.rand(100)  # the global generator does not feed it
    assert torch.equal(torch.rand(3, generator=generator(4)), a)
    assert not torch.equal(torch.rand(3, generator=generator(5)), a)


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, True, "0"])
def test_seed_all_refuses_bad_seeds(bad):
    with pytest.raises(ValueError, match="seed"):
        seed_all(bad)
