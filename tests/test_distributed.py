"""doubleopt.distributed: collectives, rank-split streams, the start-up consistency check and sharded solves.

The multi-process tests launch this file under ``torchrun`` (2 processes, gloo, one thread each):
``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/test_distributed.py CASE OUT``; the
workers write what they computed to OUT and the test compares it with a single-process computation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import doubleopt as do
from doubleopt.distributed import (
    Comm,
    check_same,
    init_from_env,
    run_identity,
    shard_context,
    sharded_solve,
    stream_generator,
    stream_seed,
)

LAUNCH_TIMEOUT_S = 180


def torchrun(
    script: str | Path, *args: str, nproc: int = 2, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run ``script args`` (``script`` may be ``"-m"``) under ``torchrun --standalone`` with ``nproc`` processes
    and one thread each."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *extra,
        str(script), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


def logistic_batch(B: int = 37):
    fam = do.problems.LogisticRegression(n_features=3, n_points=40, dtype=torch.float64)
    return fam, fam.sample(B, generator=torch.Generator().manual_seed(3))


SOLVE_OPTIONS = {"max_steps": 12, "tol": 1e-9}  # some instances stop at max_steps: the codes differ


# ---- one process ---------------------------------------------------------------------------------------------
def test_one_process_comm_is_identity():
    comm = Comm()
    t = torch.randn(3)
    assert comm.sum([t])[0] is t and comm.all(True) and not comm.all(False)
    assert comm.gather(t)[0] is t and comm.gather_text("é") == ["é"]
    check_same(comm, run_identity(seed=0))  # nothing to compare, no error


def test_shard_covers_range_in_order():
    for n in (0, 1, 7, 8):
        parts = [Comm(rank=r, world=3).shard(n) for r in range(3)]
        assert [i for p in parts for i in p] == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match=r"pairs \(7\) must be a multiple of the number of processes \(2\)"):
        Comm(rank=0, world=2).shard(7, even=True, what="pairs")
    with pytest.raises(ValueError, match="rank must be"):
        Comm(rank=2, world=2)


def test_streams_are_independent_and_stream0_is_the_seed():
    assert stream_seed(5, 0) == 5
    a = torch.rand(4, generator=stream_generator(5, 0))
    assert torch.equal(a, torch.rand(4, generator=torch.Generator().manual_seed(5)))
    b = torch.rand(4, generator=stream_generator(5, 1))
    assert not torch.equal(a, b)
    assert stream_seed(5, 1) != stream_seed(6, 1)
    with pytest.raises(ValueError, match="stream must be >= 0"):
        stream_seed(0, -1)


def test_init_from_env_outside_torchrun_is_one_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert init_from_env() == Comm()


def test_sharded_solve_one_process_equals_solve():
    fam, x = logistic_batch(9)
    ref = do.solve(fam, do.LBFGS(), x, throw=False, **SOLVE_OPTIONS)
    sol = sharded_solve(fam, do.LBFGS(), x, comm=Comm(), throw=False, **SOLVE_OPTIONS)
    assert torch.equal(sol.result, ref.result) and torch.equal(sol.y, ref.y)
    with pytest.raises(ValueError, match="trace or progress"):
        sharded_solve(fam, do.LBFGS(), x, comm=Comm(), trace=True)


def test_shard_context_keeps_shared_leaves():
    fam, x = logistic_batch(6)
    part = shard_context(x, range(2, 5), 6)
    assert part.features.shape[0] == 3 and torch.equal(part.features, x.features[2:5])


# ---- two processes -------------------------------------------------------------------------------------------
def test_two_processes_collectives_check_and_sharded_solve(tmp_path):
    r = torchrun(Path(__file__), "basics", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    facts = json.loads((tmp_path / "facts.json").read_text())
    assert facts["sum"] == [3.0, 3.0] and facts["all_true"] is True and facts["one_false"] is False
    assert facts["texts"] == ["rank 0", "rank 1 é"] and facts["rows"] == [0.0, 1.0, 1.0]
    assert facts["nan_agreed"] == [False, False]  # the rank with a NaN made both skip
    for rank in (0, 1):
        msg = (tmp_path / f"mismatch{rank}.txt").read_text()
        assert "seed is 0 on rank 0 but 1 on rank 1" in msg and "batch" not in msg
    # sharded solve == one process's solve, instance by instance (37 instances: shards of 19 and 18)
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "sharded.safetensors"))
    fam, x = logistic_batch()
    ref = do.solve(fam, do.LBFGS(), x, throw=False, **SOLVE_OPTIONS)
    assert len(set(ref.result.tolist())) > 1  # both codes occur, so codes are really compared
    assert torch.equal(got["result"], ref.result) and torch.equal(got["num_steps"], ref.num_steps)
    torch.testing.assert_close(got["y"], ref.y, rtol=0, atol=1e-12)
    torch.testing.assert_close(got["value"], ref.value, rtol=0, atol=1e-12)
    assert facts["solve_error_failed"] == torch.nonzero(~ref.successful).flatten().tolist()


def _worker_basics(out: Path) -> None:
    from safetensors.torch import save_file

    comm = init_from_env()
    assert comm.world == 2, comm
    facts = {
        "sum": comm.sum([torch.tensor([1.0, 1.0]) * (comm.rank + 1)])[0].tolist(),
        "all_true": comm.all(True),
        "one_false": comm.all(comm.rank == 0),
        "texts": comm.gather_text("rank 0" if comm.rank == 0 else "rank 1 é"),
        "rows": comm.gather_rows(torch.full((comm.rank + 1,), float(comm.rank))).tolist(),
    }
    grad = torch.tensor([float("nan") if comm.rank == 1 else 1.0])
    finite = bool(torch.isfinite(comm.sum([grad])[0]).all())
    facts["nan_agreed"] = comm.gather_text(json.dumps(comm.all(finite)))
    facts["nan_agreed"] = [json.loads(t) for t in facts["nan_agreed"]]
    try:
        check_same(comm, run_identity(seed=comm.rank, batch=16))
        raise AssertionError("check_same accepted different seeds")
    except ValueError as e:
        (out / f"mismatch{comm.rank}.txt").write_text(str(e))
    fam, x = logistic_batch()
    sol = sharded_solve(fam, do.LBFGS(), x, comm=comm, throw=False, **SOLVE_OPTIONS)
    try:
        sharded_solve(fam, do.LBFGS(), x, comm=comm, **SOLVE_OPTIONS)
    except do.SolveError as e:
        facts["solve_error_failed"] = e.failed
    if comm.is_main:
        save_file({k: getattr(sol, k).contiguous() for k in ("y", "value", "result", "num_steps")},
                  str(out / "sharded.safetensors"))  # fmt: skip
        (out / "facts.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    torch.set_num_threads(1)
    case, out_dir = sys.argv[1], Path(sys.argv[2])
    {"basics": _worker_basics}[case](out_dir)
    from doubleopt.distributed import exit_worker

    exit_worker(init_from_env())  # the group the worker joined
