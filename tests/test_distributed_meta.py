"""Data-parallel meta-training: 2 processes (torchrun, gloo) give the weights of 1 process with the same global
batch and seed (float64, 1e-6) for TBPTT, ES and PES; checkpoints are the same whatever the number of processes;
a non-finite meta-gradient on one process makes both skip; ``doubleopt train-lopt`` under torchrun; a 2-node
launch on the loopback interface.

The workers are this file run under ``torchrun`` (see :func:`tests.test_distributed.torchrun`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from doubleopt.distributed import Comm, init_from_env, stream_seed
from doubleopt.learned import LSTMOptimizer, QuadraticTask
from doubleopt.learned.meta import MetaConfig, MetaTrainer, load_checkpoint, meta_train

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import LAUNCH_TIMEOUT_S, torchrun  # noqa: E402

STEPS = 3  # meta-steps: with unroll 2 and horizon 4 the trajectories restart once
CONFIGS = {
    "tbptt": {"method": "tbptt", "shards": 2, "batch": 4},
    "tbptt-stagger": {"method": "tbptt", "shards": 2, "stagger": 2, "batch": 8},
    "es": {"method": "es", "es_pairs": 4, "batch": 3},
    "pes": {"method": "pes", "es_pairs": 4, "batch": 3},
}


def make_trainer(name: str, comm: Comm | None = None, task=None) -> MetaTrainer:
    torch.manual_seed(0)  # the initial weights: the same on every process
    lopt = LSTMOptimizer(hidden=4).double()
    task = QuadraticTask(dim=3, dtype=torch.float64) if task is None else task
    cfg = MetaConfig(unroll=2, horizon=4, seed=5, es_sigma=0.05, meta_lr=0.01, **CONFIGS[name])
    return MetaTrainer(lopt, task, cfg, comm=Comm() if comm is None else comm)


def weights(trainer: MetaTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.lopt.state_dict().items()}


class PoisonedQuadratics(QuadraticTask):
    """Quadratics whose held-out batch of random stream 1 is NaN at its ``at``-th draw: one process (the one
    drawing stream 1) gets a non-finite meta-gradient at one meta-step."""

    def __init__(self, seed: int, at: int):
        super().__init__(dim=3, dtype=torch.float64)
        self.poisoned_seed, self.at, self.calls = stream_seed(seed, 1), at, 0

    def eval_batch(self, inst, generator):
        if generator.initial_seed() != self.poisoned_seed:
            return inst
        self.calls += 1
        return type(inst)(inst.W * float("nan"), inst.y) if self.calls == self.at else inst


# ---- one process ---------------------------------------------------------------------------------------------
def test_one_stream_is_the_single_process_run():
    """shards=1 draws what the trainer always drew (stream 0 is the seed itself)."""
    tr = make_trainer("tbptt")
    assert [stream_seed(5, s) for s in tr.streams] == [5, stream_seed(5, 1)]
    assert tr.gen.initial_seed() == 5 and len(tr.state.carries) == 2


def test_shards_and_pairs_are_checked():
    with pytest.raises(ValueError, match="shards applies to method 'tbptt' only"):
        MetaConfig(method="es", shards=2)
    with pytest.raises(ValueError, match=r"shards x stagger must divide batch \(6\)"):
        MetaConfig(batch=6, shards=4)
    with pytest.raises(ValueError, match=r"shards \(3\) must be a multiple of the number of processes \(2\)"):
        MetaTrainer(LSTMOptimizer(hidden=2), QuadraticTask(dim=2), MetaConfig(batch=6, shards=3), comm=FakeTwo())
    with pytest.raises(ValueError, match=r"es pairs \(es_pairs\) \(3\) must be a multiple of the number of proc"):
        MetaTrainer(LSTMOptimizer(hidden=2), QuadraticTask(dim=2), MetaConfig(method="es", es_pairs=3), comm=FakeTwo())
    with pytest.raises(ValueError, match="method 'gps' does not support data-parallel training"):
        MetaTrainer(LSTMOptimizer(hidden=2), QuadraticTask(dim=2), MetaConfig(method="gps"), comm=FakeTwo())


class FakeTwo(Comm):
    """Rank 0 of 2 whose partner has the same configuration (the start-up check's only collective), for argument
    checks that fail before meta-training starts."""

    def __init__(self):
        super().__init__(rank=0, world=2)

    def gather_text(self, text):
        return [text, text]


def test_checkpoint_fallback_to_previous_when_latest_is_corrupt_or_truncated(tmp_path):
    ref = make_trainer("pes")
    meta_train(ref, 4, progress=False)
    for damage in ("flip", "truncate"):
        ckpt = tmp_path / damage / "checkpoint.safetensors"
        meta_train(make_trainer("pes"), 4, checkpoint=ckpt, checkpoint_every=2, progress=False)
        data = bytearray(ckpt.read_bytes())
        if damage == "flip":
            data[-3] ^= 0xFF  # a byte of the tensor data: the file opens, the checksum does not match
        else:
            data = data[: len(data) // 2]
        ckpt.write_bytes(bytes(data))
        tr = make_trainer("pes")
        with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
            used = load_checkpoint(tr, ckpt)
        assert used.name == "checkpoint.prev.safetensors" and tr.meta_step == 2
        with pytest.warns(UserWarning):
            meta_train(tr, 4, checkpoint=ckpt, checkpoint_every=2, resume=True, progress=False)
        for k, v in weights(ref).items():
            assert torch.equal(weights(tr)[k], v), k
    (tmp_path / "flip" / "checkpoint.prev.safetensors").write_bytes(b"garbage")
    (tmp_path / "flip" / "checkpoint.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no readable checkpoint"), pytest.warns(UserWarning):
        load_checkpoint(make_trainer("pes"), tmp_path / "flip" / "checkpoint.safetensors")


# ---- two processes -------------------------------------------------------------------------------------------
def reference_runs(tmp_path: Path) -> dict[str, MetaTrainer]:
    out = {}
    for name in CONFIGS:
        tr = make_trainer(name)
        meta_train(tr, STEPS, progress=False)
        out[name] = tr
    return out


def test_two_processes_equal_one_process(tmp_path):
    r = torchrun(Path(__file__), "equivalence", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    from safetensors.torch import load_file

    for name, ref in reference_runs(tmp_path).items():
        for rank in (0, 1):
            got = load_file(str(tmp_path / f"{name}-rank{rank}.safetensors"))
            for k, v in weights(ref).items():
                torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6, msg=f"{name} rank {rank} {k}")
        start = weights(make_trainer(name))
        assert any(not torch.equal(v, start[k]) for k, v in weights(ref).items())  # training moved the weights
        # the checkpoint written by 2 processes is the single process's state (trajectories of both ranks)
        mine, theirs = load_file(str(tmp_path / f"{name}-step{STEPS}.safetensors")), ref.state_tensors()
        assert sorted(mine) == sorted(theirs), name
        for k in theirs:
            if theirs[k].is_floating_point():
                torch.testing.assert_close(mine[k], theirs[k], rtol=0, atol=1e-6, msg=f"{name} {k}")
            elif k not in ("counters", "peak_saved_bytes"):  # per process: trajectories started, memory
                assert torch.equal(mine[k], theirs[k]), f"{name} {k}"
        # resumed on 2 processes from that checkpoint and run 2 more steps == 5 steps on one process
        ref5 = make_trainer(name)
        meta_train(ref5, STEPS + 2, progress=False)
        got = load_file(str(tmp_path / f"{name}-resumed.safetensors"))
        for k, v in weights(ref5).items():
            torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6, msg=f"{name} resumed {k}")
    # a NaN on rank 1 only: both skip that step and agree with one process that sees the same NaN
    facts = json.loads((tmp_path / "poison.json").read_text())
    ref = make_trainer("tbptt", task=PoisonedQuadratics(seed=5, at=3))
    meta_train(ref, STEPS, progress=False)
    assert ref.skipped == 1 and facts["skipped"] == [1, 1]
    got = load_file(str(tmp_path / "poison.safetensors"))
    for k, v in weights(ref).items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6)


def _worker_equivalence(out: Path) -> None:
    from safetensors.torch import save_file

    comm = init_from_env()
    assert comm.world == 2
    for name in CONFIGS:
        tr = make_trainer(name, comm)
        meta_train(tr, STEPS, checkpoint=out / f"{name}.safetensors", checkpoint_every=STEPS, progress=False)
        save_file(weights(tr), str(out / f"{name}-rank{comm.rank}.safetensors"))
        if comm.is_main:
            shutil.copy(out / f"{name}.safetensors", out / f"{name}-step{STEPS}.safetensors")
        resumed = make_trainer(name, comm)
        meta_train(resumed, STEPS + 2, checkpoint=out / f"{name}.safetensors", checkpoint_every=100, resume=True,
                   progress=False)  # fmt: skip
        if comm.is_main:
            save_file(weights(resumed), str(out / f"{name}-resumed.safetensors"))
    tr = make_trainer("tbptt", comm, task=PoisonedQuadratics(seed=5, at=3))
    meta_train(tr, STEPS, progress=False)
    skipped = [int(t) for t in comm.gather(torch.tensor([tr.skipped]))]
    if comm.is_main:
        save_file(weights(tr), str(out / "poison.safetensors"))
        (out / "poison.json").write_text(json.dumps({"skipped": skipped}))


# ---- the command line ----------------------------------------------------------------------------------------
TRAIN_ARGS = ["train-lopt", "--task", "quadratic", "--hidden", "4", "--meta-steps", "3", "--unroll", "2",
              "--horizon", "4", "--batch", "4", "--no-progress", "--checkpoint-every", "2"]  # fmt: skip


def test_train_lopt_under_torchrun_equals_one_process(tmp_path, capsys):
    r = torchrun("-m", "doubleopt", *TRAIN_ARGS, "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("wrote ") == 1  # rank 0 only
    from safetensors.torch import load_file

    from doubleopt.cli import main

    assert main([*TRAIN_ARGS, "--out", str(tmp_path / "one"), "--shards", "2"]) == 0
    record = json.loads((tmp_path / "two" / "record.json").read_text())
    assert record["processes"] == 2 and record["meta_config"]["shards"] == 2
    one = load_file(str(tmp_path / "one" / "lstm-quadratic.safetensors"))
    two = load_file(str(tmp_path / "two" / "lstm-quadratic.safetensors"))
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-6)
    # resuming it with 1 process and the default 1 shard is another run: refused, naming the config
    assert main([*TRAIN_ARGS, "--out", str(tmp_path / "two"), "--resume"]) == 2
    assert "was written with config" in capsys.readouterr().err


# ---- two nodes on the loopback interface ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_equal_one_process(tmp_path):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launches = []
    for node in (0, 1):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            f"--node-rank={node}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=doubleopt-test", "--local-addr=127.0.0.1", __file__, "two-nodes", str(tmp_path),
        ]  # fmt: skip
        launches.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=LAUNCH_TIMEOUT_S)[0] for p in launches]
    assert all(p.returncode == 0 for p in launches), "\n".join(outputs)
    from safetensors.torch import load_file

    ref = make_trainer("tbptt")
    meta_train(ref, STEPS, progress=False)
    got = load_file(str(tmp_path / "two-nodes.safetensors"))
    for k, v in weights(ref).items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6)


def _worker_two_nodes(out: Path) -> None:
    from safetensors.torch import save_file

    comm = init_from_env()
    assert comm.world == 2 and os.environ["GROUP_RANK"] == str(comm.rank)  # one process per node
    tr = make_trainer("tbptt", comm)
    meta_train(tr, STEPS, checkpoint=out / "ckpt.safetensors", progress=False)
    if comm.is_main:
        save_file(weights(tr), str(out / "two-nodes.safetensors"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    case, out_dir = sys.argv[1], Path(sys.argv[2])
    {"equivalence": _worker_equivalence, "two-nodes": _worker_two_nodes}[case](out_dir)
    from doubleopt.distributed import exit_worker

    exit_worker(init_from_env())  # the group the worker joined
