"""Elastic restarts: ``doubleopt train-lopt`` under ``torchrun --max-restarts 2`` with a worker SIGKILLed twice, once
in the middle of writing a checkpoint (rank 0) and once between checkpoints (rank 1); the restarted group resumes
from the last complete checkpoint and ends with the weights of an uninterrupted run.

The workers are this file run under ``torchrun``: ``... tests/test_distributed_elastic.py OUT``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import torchrun  # noqa: E402

META_STEPS = 6
TRAIN_ARGS = ["train-lopt", "--task", "quadratic", "--hidden", "4", "--meta-steps", str(META_STEPS),
              "--unroll", "2", "--horizon", "4", "--batch", "4", "--no-progress", "--checkpoint-every", "2",
              "--resume"]  # fmt: skip
KILL_WRITER_AT = 4  # attempt 0: rank 0 dies while writing the checkpoint of this meta-step
KILL_RANK1_AT = 5  # attempt 1: rank 1 dies after this meta-step (the last checkpoint is that of step 4)


def test_sigkilled_workers_resume_from_last_complete_checkpoint(tmp_path):
    r = torchrun(Path(__file__), str(tmp_path), extra=("--max-restarts=2",))
    assert r.returncode == 0, r.stdout + r.stderr
    starts = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("attempt*.json")}
    # attempt 1 found no latest checkpoint (its write was killed) and resumed from the previous one (step 2);
    # attempt 2 resumed from the checkpoint of step 4; both ranks agreed
    assert starts == {
        "attempt0-rank0": 0, "attempt0-rank1": 0,
        "attempt1-rank0": 2, "attempt1-rank1": 2,
        "attempt2-rank0": 4, "attempt2-rank1": 4,
    }  # fmt: skip
    assert list((tmp_path / "out").glob("checkpoint.safetensors.*.tmp"))  # the killed write's partial file
    from safetensors.torch import load_file

    from doubleopt.cli import main

    assert main([*TRAIN_ARGS, "--out", str(tmp_path / "ref"), "--shards", "2"]) == 0
    ref = load_file(str(tmp_path / "ref" / "lstm-quadratic.safetensors"))
    got = load_file(str(tmp_path / "out" / "lstm-quadratic.safetensors"))
    assert sorted(got) == sorted(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6)
    record = json.loads((tmp_path / "out" / "record.json").read_text())
    assert record["resumed"] and record["meta_steps"] == META_STEPS


def _worker(out: Path) -> None:
    import doubleopt.learned.meta as meta
    from doubleopt.cli import build_parser
    from doubleopt.learned._cli import run

    attempt, rank = int(os.environ["TORCHELASTIC_RESTART_COUNT"]), int(os.environ["RANK"])
    args = build_parser().parse_args([*TRAIN_ARGS, "--out", str(out / "out")])
    args.argv = TRAIN_ARGS
    if attempt == 0 and rank == 0:
        real_save = meta.atomic_save

        def save_then_die(tensors, path, metadata=None):
            if int(tensors["counters"][0]) < KILL_WRITER_AT:
                return real_save(tensors, path, metadata)
            from safetensors.torch import save

            data = save(tensors, metadata)
            (path.parent / f"{path.name}.killed.tmp").write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

        meta.atomic_save = save_then_die

    def callback(trainer, info):
        marker = out / f"attempt{attempt}-rank{rank}.json"
        if not marker.exists():
            marker.write_text(json.dumps(trainer.meta_step - 1))
        if attempt == 1 and rank == 1 and trainer.meta_step == KILL_RANK1_AT:
            os.kill(os.getpid(), signal.SIGKILL)

    run(args, callback=callback)


if __name__ == "__main__":
    torch.set_num_threads(1)
    _worker(Path(sys.argv[1]))
