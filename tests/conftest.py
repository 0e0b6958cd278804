import os

import pytest
import torch

# Each xdist worker gets one thread so two workers use the two cores without oversubscription.
torch.set_num_threads(int(os.environ.get("DOUBLEOPT_TEST_THREADS", "1")))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
