"""Meta-training options of the learned optimizers: the digits task's data-size variation (``rows``),
starting from saved weights (``--init-weights``) and staggered TBPTT trajectories (``stagger``)."""

from __future__ import annotations

import pytest
import torch
from helpers import train_lopt_full_and_resumed

from doubleopt.learned import DigitsMLPTask, LSTMOptimizer, make_task
from doubleopt.learned.meta import MetaConfig, MetaTrainer


def _row_ids(task, ctx):
    """Index of every minibatch row in the split (digits rows are distinct up to duplicates; match labels too)."""
    X, t = task.problem.data_inputs, task.problem.data_labels
    match = (ctx.inputs[:, :, None, :] == X[None, None]).all(-1) & (ctx.labels[:, :, None] == t[None, None])
    return match


def test_rows_draws_every_minibatch_from_the_instance_subset():
    task = DigitsMLPTask(rows=150)
    g = torch.Generator().manual_seed(0)
    inst, theta0 = task.reset(3, g)
    assert inst.shape == (3, 150) and theta0.shape == (3, task.problem.dim)
    assert all(len(set(r.tolist())) == 150 for r in inst)  # without replacement
    assert not torch.equal(inst[0].sort().values, inst[1].sort().values)  # each optimizee its own subset
    in_subset = torch.zeros(3, task.problem.data_inputs.shape[0], dtype=torch.bool)
    in_subset[torch.arange(3)[:, None], inst] = True
    seen = torch.zeros_like(in_subset)
    for batch in (task.train_batch, task.eval_batch) * 5:
        ctx = batch(inst, g)
        assert ctx.inputs.shape == (3, 128, 64) and ctx.labels.shape == (3, 128)
        m = _row_ids(task, ctx)  # (3, 128, n_split)
        # every minibatch row is (a copy of) a row of that instance's subset
        assert (m & in_subset[:, None, :]).any(-1).all()
        seen |= (m & in_subset[:, None, :]).any(1)
    # the whole split's minibatches would leave the subset almost surely: here 10 batches stay inside
    # a 150-row subset, and they cover most of it
    assert (seen.sum(1) > 140).all()
    # without rows the minibatches come from the whole split
    full = DigitsMLPTask()
    fi, _ = full.reset(3, torch.Generator().manual_seed(0))
    assert fi.shape == (3,)
    m = _row_ids(full, full.train_batch(fi, torch.Generator().manual_seed(1)))
    assert not (m & in_subset[:, None, :]).any(-1).all()


def test_rows_changes_meta_training_and_is_recorded_in_the_task_name():
    def grads(task):
        torch.manual_seed(0)
        tr = MetaTrainer(LSTMOptimizer(), task, MetaConfig(unroll=3, horizon=3, batch=2, seed=0))
        info = tr.step()
        return info.loss, [p.detach().clone() for p in tr.lopt.parameters()]

    loss_full, w_full = grads(make_task("digits"))
    loss_sub, w_sub = grads(make_task("digits", rows=128))
    assert loss_full != loss_sub
    assert any(not torch.equal(a, b) for a, b in zip(w_full, w_sub))
    assert make_task("digits", rows=300).name.endswith("-rows300")
    assert make_task("digits").name == "digits-mlp20-sigmoid-train"


def test_rows_errors_and_cli_option():
    from doubleopt.cli import build_parser

    with pytest.raises(ValueError, match="rows must be 0 or between"):
        DigitsMLPTask(rows=100)  # fewer rows than a minibatch
    with pytest.raises(ValueError, match="rows must be 0 or between"):
        DigitsMLPTask(rows=10**6)
    with pytest.raises(ValueError, match="digits task only"):
        make_task("quadratic", rows=200)
    args = build_parser().parse_args(["train-lopt", "--rows", "450"])
    assert args.rows == 450
    from doubleopt.learned._cli import build

    assert build(args).task.rows == 450 and build(args).task.name.endswith("-rows450")
    assert build_parser().parse_args(["train-lopt"]).rows == 0


def test_init_weights_starts_meta_training_from_a_file(tmp_path):
    from doubleopt.cli import build_parser
    from doubleopt.learned._cli import build, run

    torch.manual_seed(123)
    start = LSTMOptimizer()
    with torch.no_grad():
        for p in start.parameters():
            p.add_(0.5)  # far from any seeded initialization
    path = start.save_weights(tmp_path / "start.safetensors")
    common = ["train-lopt", "--task", "quadratic", "--unroll", "2", "--horizon", "4", "--batch", "2", "--no-progress"]
    fresh = build(build_parser().parse_args(common))
    warm = build(build_parser().parse_args([*common, "--init-weights", str(path)]))
    for a, b, c in zip(start.parameters(), warm.lopt.parameters(), fresh.lopt.parameters()):
        assert torch.equal(a, b) and not torch.equal(a, c)
    # a short run moves away from the start, and records where it started
    args = build_parser().parse_args(
        [*common, "--meta-steps", "2", "--init-weights", str(path), "--out", str(tmp_path / "o")]
    )
    run(args)
    import json

    rec = json.loads((tmp_path / "o" / "record.json").read_text())
    assert rec["init_weights"] == str(path) and rec["meta_steps"] == 2
    trained = LSTMOptimizer().load_weights(tmp_path / "o" / "lstm-quadratic.safetensors")
    diffs = [float((a - b).abs().max()) for a, b in zip(start.state_dict().values(), trained.state_dict().values())]
    assert 0 < max(diffs) < 0.1  # two Adam steps of meta_lr 3e-3 from the start, not from a fresh init
    # another architecture is refused, naming the tensor
    with pytest.raises(ValueError, match="into MLPOptimizer: tensor 'net.0.weight'"):
        build(build_parser().parse_args([*common, "--arch", "mlp", "--init-weights", str(path)]))


def test_stagger_spreads_trajectory_phases_and_restarts_groups_on_their_own():
    from doubleopt.learned import QuadraticTask

    cfg = MetaConfig(unroll=2, horizon=8, batch=8, stagger=4, seed=3)
    assert cfg.stagger_offsets() == [0, 2, 4, 6]
    torch.manual_seed(0)
    tr = MetaTrainer(LSTMOptimizer(), QuadraticTask(), cfg)
    assert [int(c.t) for c in tr.groups] == [0, 2, 4, 6] and tr.trajectories == 4
    assert all(c.y.shape == (2, 10) for c in tr.groups)
    phases = []
    for _ in range(4):
        info = tr.step()
        assert not info.skipped
        phases.append([int(c.t) for c in tr.groups])
    # every meta-step sees all four phases; the group that reached the horizon restarted alone
    assert phases == [[2, 4, 6, 0], [4, 6, 0, 2], [6, 0, 2, 4], [0, 2, 4, 6]]
    assert tr.trajectories == 8

    # the meta-loss is the mean over the groups, each at its own step (here: the initial losses of fresh
    # quadratics are much larger than those of groups already 2-6 steps in)
    torch.manual_seed(0)
    lock = MetaTrainer(LSTMOptimizer(), QuadraticTask(), MetaConfig(unroll=2, horizon=8, batch=8, seed=3))
    assert lock.groups == [] and int(lock.carry.t) == 0
    a, b = lock.step(), MetaTrainer(LSTMOptimizer(), QuadraticTask(), cfg).step()
    assert a.loss != b.loss


def test_stagger_resume_gives_the_same_weights_and_bad_values_are_refused(tmp_path):
    from safetensors.torch import load_file

    from doubleopt.cli import build_parser
    from doubleopt.learned._cli import run

    common = ["--task", "quadratic", "--unroll", "2", "--horizon", "6", "--batch", "3", "--stagger", "3"]
    common += ["--meta-steps", "5", "--checkpoint-every", "2", "--no-progress", "--seed", "4"]
    train_lopt_full_and_resumed(common, tmp_path, stop_at=2)
    a = load_file(tmp_path / "full" / "lstm-quadratic.safetensors")
    b = load_file(tmp_path / "cut" / "lstm-quadratic.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a checkpoint of a staggered run does not resume a lockstep one
    lockstep = [*common[: common.index("--stagger")], *common[common.index("--stagger") + 2 :]]
    with pytest.raises(ValueError, match="same arguments"):
        run(build_parser().parse_args(["train-lopt", *lockstep, "--out", str(tmp_path / "cut"), "--resume"]))
    with pytest.raises(ValueError, match="stagger must be"):
        MetaConfig(batch=8, stagger=3)
    with pytest.raises(ValueError, match="stagger must be"):
        MetaConfig(unroll=20, horizon=40, batch=4, stagger=4)
    with pytest.raises(ValueError, match="applies to method .tbptt. only"):
        MetaConfig(method="es", batch=4, stagger=2)


def test_a_new_estimator_is_one_registered_class(tmp_path):
    """A meta-gradient estimator registered by name is used by MetaTrainer (here: zero gradients leave the
    weights unchanged) and its state's tensors go into checkpoints, with no change to the trainer."""
    from dataclasses import dataclass

    from doubleopt.learned import QuadraticTask
    from doubleopt.learned.estimators import ESTIMATORS, EstimatorState, MetaGradientEstimator, register_estimator
    from doubleopt.learned.meta import load_checkpoint, save_checkpoint

    @dataclass
    class ZeroState(EstimatorState):
        calls: torch.Tensor

    @register_estimator("zero")
    @dataclass(frozen=True)
    class Zero(MetaGradientEstimator):
        def init(self, trainer):
            return ZeroState(carries=[trainer.new_trajectory()], calls=torch.zeros((), dtype=torch.int64))

        def estimate(self, trainer, state):
            grads = [torch.zeros_like(p) for p in trainer.lopt.parameters()]
            return 0.5, grads, ZeroState(carries=state.carries, calls=state.calls + 1)

    try:
        torch.manual_seed(0)
        cfg = MetaConfig(method="zero", unroll=2, horizon=4, batch=3)
        tr = MetaTrainer(LSTMOptimizer(), QuadraticTask(), cfg)
        before = {k: v.clone() for k, v in tr.lopt.state_dict().items()}
        infos = [tr.step(), tr.step()]
        assert isinstance(tr.estimator, Zero) and int(tr.state.calls) == 2
        assert [i.loss for i in infos] == [0.5, 0.5] and not any(i.skipped for i in infos)
        assert all(torch.equal(before[k], v) for k, v in tr.lopt.state_dict().items())
        save_checkpoint(tr, tmp_path / "zero.safetensors")
        again = MetaTrainer(LSTMOptimizer(), QuadraticTask(), cfg)
        load_checkpoint(again, tmp_path / "zero.safetensors")
        assert int(again.state.calls) == 2 and again.meta_step == 2
        with pytest.raises(ValueError, match="registered already"):
            register_estimator("zero")(Zero)
    finally:
        ESTIMATORS.pop("zero", None)
    with pytest.raises(ValueError, match="method must be one of"):
        MetaConfig(method="zero")
