"""Data-parallel ``doubleopt.amortized.fit``: 2 processes (torchrun, gloo) give the weights and loss history of one
process with the same ``shards`` and seed (float64, 1e-6), on fresh contexts (objective loss) and on a fixed
training set with targets from a reference solver (regression loss, reference solves sharded).

The workers are this file run under ``torchrun`` (see :func:`tests.test_distributed.torchrun`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import doubleopt as do
from doubleopt.distributed import Comm, init_from_env

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import torchrun  # noqa: E402

CASES = {
    "fresh": {"loss": "objective", "batch_size": 8, "shards": 2},
    "fixed": {"loss": "regression", "batch_size": 6, "train_size": 20, "reference": do.LBFGS(), "shards": 2},
}


class Linear(torch.nn.Module):
    """y = W b + c for a quadratic's linear term b."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3, dtype=torch.float64)

    def forward(self, x):
        return self.lin(x.b)


def run_fit(case: str, comm: Comm | None = None):
    torch.manual_seed(0)
    model = Linear()
    family = do.problems.Quadratic(dim=3, condition_number=4.0, dtype=torch.float64)
    res = do.amortized.fit(do.amortized.FullyAmortized(model), family, steps=6, lr=0.05, val_size=16, val_every=3,
                           seed=2, progress=False, comm=comm, **CASES[case])  # fmt: skip
    return model, res


def test_fit_argument_checks():
    with pytest.raises(ValueError, match=r"shards must be >= 1 and divide batch_size \(8\)"):
        run_fit_with(shards=3)


def run_fit_with(**kw):
    family = do.problems.Quadratic(dim=3, dtype=torch.float64)
    return do.amortized.fit(do.amortized.FullyAmortized(Linear()), family, steps=1, batch_size=8, progress=False, **kw)


def test_two_processes_fit_equals_one_process(tmp_path):
    r = torchrun(Path(__file__), "fit", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    from safetensors.torch import load_file

    for case in CASES:
        model, res = run_fit(case)
        got = load_file(str(tmp_path / f"{case}.safetensors"))
        torch.manual_seed(0)
        start = Linear().state_dict()
        for k, v in model.state_dict().items():
            torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6, msg=f"{case} {k}")
        assert any(not torch.equal(v, start[k]) for k, v in model.state_dict().items())
        history = json.loads((tmp_path / f"{case}.json").read_text())
        assert [h["step"] for h in history] == [h["step"] for h in res.history]
        for mine, theirs in zip(history, res.history):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-9, rel=1e-9)
            assert mine["val_loss"] == pytest.approx(theirs["val_loss"], abs=1e-9, rel=1e-9)


def _worker_fit(out: Path) -> None:
    from safetensors.torch import save_file

    comm = init_from_env()
    assert comm.world == 2
    for case in CASES:
        model, res = run_fit(case, comm)
        if comm.is_main:
            save_file(model.state_dict(), str(out / f"{case}.safetensors"))
            (out / f"{case}.json").write_text(json.dumps(res.history))


if __name__ == "__main__":
    torch.set_num_threads(1)
    case, out_dir = sys.argv[1], Path(sys.argv[2])
    {"fit": _worker_fit}[case](out_dir)
    from doubleopt.distributed import exit_worker

    exit_worker(init_from_env())
