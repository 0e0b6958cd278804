"""Learned optimizers: update rules, solver integration, meta-gradients (vs finite differences, ES/PES vs
BPTT), bounded memory, skipped non-finite meta-steps, resumable training, torch.optim adapter, weights."""

from __future__ import annotations

import argparse

import pytest
import torch
from helpers import train_lopt_full_and_resumed
from safetensors.torch import load_file

import doubleopt as do
from doubleopt.learned import (
    LSTMOptimizer,
    MLPOptimizer,
    QuadraticRegression,
    QuadraticTask,
    TorchOptimizer,
    load_pretrained,
    preprocess_gradient,
)
from doubleopt.learned.meta import MetaConfig, MetaTrainer, rollout, start_trajectory, unroll


def _flat_grad(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def test_preprocessing_matches_paper():
    p = 10.0
    g = torch.tensor([1.0, -2.0, 1e-3, -1e-6, 0.0], dtype=torch.float64)  # e^-10 = 4.5e-5
    out = preprocess_gradient(g, p)
    import math

    assert torch.allclose(out[0], torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(out[1], torch.tensor([math.log(2.0) / p, -1.0], dtype=torch.float64))
    assert torch.allclose(out[2], torch.tensor([math.log(1e-3) / p, 1.0], dtype=torch.float64))
    assert torch.allclose(out[3], torch.tensor([-1.0, -1e-6 * math.exp(p)], dtype=torch.float64))
    assert torch.allclose(out[4], torch.tensor([-1.0, 0.0], dtype=torch.float64))


def test_quadratic_regression_gradient_and_errors():
    fam = QuadraticRegression(dim=5, dtype=torch.float64)
    x = fam.sample(3, seed=0)
    y = torch.randn(3, 5, dtype=torch.float64)
    f, g = fam.smooth_value_and_grad(y, x)
    y.requires_grad_(True)
    (g_ad,) = torch.autograd.grad(fam.objective(y, x).sum(), y)
    assert torch.allclose(g, g_ad)
    with pytest.raises(ValueError, match="LeastSquaresContext"):
        do.solve(fam, do.Adam(), torch.zeros(3, 5), torch.zeros(3, 5))


@pytest.mark.parametrize("make", [LSTMOptimizer, lambda: MLPOptimizer(hidden=8)])
def test_as_solver_runs_in_solve_and_is_batched(make):
    lopt = make()
    fam = QuadraticRegression()
    x = fam.sample(4, seed=1)
    sol = do.solve(fam, lopt.as_solver(), x, max_steps=6, throw=False)
    assert sol.y.shape == (4, 10) and sol.num_steps.tolist() == [6] * 4
    # batching: instance 2 alone gives the same iterate as inside the batch
    # unrolled through do.solve, the solution is differentiable in the optimizer's weights
    sol_u = do.solve(fam, lopt.as_solver(), x, adjoint=do.Unroll(), max_steps=4, throw=False)
    grads = torch.autograd.grad(sol_u.value.sum(), list(lopt.parameters()), allow_unused=True)
    assert any(g is not None and bool((g != 0).any()) for g in grads)
    assert all(g is None or bool(torch.isfinite(g).all()) for g in grads)
    # a float32 optimizer drives a float64 problem
    fam64 = QuadraticRegression(dtype=torch.float64)
    assert do.solve(fam64, lopt.as_solver(), fam64.sample(2, seed=0), max_steps=3, throw=False).y.dtype == torch.float64
    x2 = do.learned.LeastSquaresContext(x.W[2:3], x.y[2:3])
    sol2 = do.solve(fam, lopt.as_solver(), x2, max_steps=6, throw=False)
    assert torch.allclose(sol.y[2:3], sol2.y, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: LSTMOptimizer(hidden=3), lambda: MLPOptimizer(hidden=4)])
def test_meta_gradient_matches_finite_differences(make):
    torch.manual_seed(0)
    lopt = make().double()
    task = QuadraticTask(dim=4, dtype=torch.float64)
    params = list(lopt.parameters())

    def meta_loss():
        gen = torch.Generator().manual_seed(3)
        carry = start_trajectory(lopt.as_solver(), task, 2, gen)
        losses, _ = unroll(lopt.as_solver(), task, carry, 4, gen)
        return losses.mean()

    with torch.enable_grad():
        grads = _flat_grad(torch.autograd.grad(meta_loss(), params))
    vec = torch.nn.utils.parameters_to_vector(params).detach()
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        d = torch.randn(vec.shape, generator=gen, dtype=torch.float64)
        h = 1e-6
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(vec + h * d, params)
            fp = meta_loss()
            torch.nn.utils.vector_to_parameters(vec - h * d, params)
            fm = meta_loss()
            torch.nn.utils.vector_to_parameters(vec, params)
        fd = (fp - fm) / (2 * h)
        assert torch.allclose(fd, grads @ d, rtol=1e-4, atol=1e-7), (float(fd), float(grads @ d))


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_es_and_pes_estimate_the_bptt_gradient():
    torch.manual_seed(0)
    base = MLPOptimizer(hidden=4, step_mult=0.05).double()
    task = QuadraticTask(dim=4, dtype=torch.float64)
    kw = dict(batch=4, seed=5, es_sigma=1e-3, second_order=True)

    def trainer(method, unroll, horizon, pairs=1):
        lopt = MLPOptimizer(hidden=4, step_mult=0.05).double()
        lopt.load_state_dict(base.state_dict())
        return MetaTrainer(lopt, task, MetaConfig(method=method, unroll=unroll, horizon=horizon, es_pairs=pairs, **kw))

    # antithetic ES on one truncation vs backprop through the same truncation
    _, g_bp, _ = trainer("tbptt", 3, 6).meta_gradient()
    _, g_es, _ = trainer("es", 3, 6, pairs=200).meta_gradient()
    assert _cos(_flat_grad(g_bp), _flat_grad(g_es)) > 0.6
    # PES: the sum of its estimates over the two truncations of a horizon estimates the gradient of the whole
    # horizon's loss (backprop through both truncations at once)
    _, g_full, _ = trainer("tbptt", 6, 6).meta_gradient()
    pes = trainer("pes", 3, 6, pairs=200)
    _, g1, _ = pes.meta_gradient()
    _, g2, _ = pes.meta_gradient()
    g_pes = _flat_grad(g1) + _flat_grad(g2)
    assert _cos(_flat_grad(g_full), g_pes) > 0.6
    # the PES carries of a + / - pair differ (each particle keeps its own trajectory)
    assert not torch.equal(pes.particles[0].y, pes.particles[1].y)


def _check_meta_gradient(tr, meta_loss):
    """The trainer's next TBPTT meta-gradient equals autograd of ``meta_loss(losses (K, B))`` on a replay of
    the same truncation (same carry, same minibatch generator state); returns it flattened."""
    carry, gen_state = tr.carry, tr.gen.get_state()
    _, g, _ = tr.meta_gradient()
    gen = torch.Generator()
    gen.set_state(gen_state)
    with torch.enable_grad():
        losses, _ = unroll(tr.solver, tr.task, carry, tr.config.unroll, gen)
        expected = torch.autograd.grad(meta_loss(losses), list(tr.lopt.parameters()))
    assert torch.allclose(_flat_grad(g), _flat_grad(expected), rtol=1e-10, atol=1e-12)
    return _flat_grad(g)


def test_meta_objective_weights_emphasize_early_steps_and_enter_the_meta_gradient():
    cfg = MetaConfig(unroll=5, horizon=20, weight_halflife=4.0)
    w = torch.cat([cfg.step_weights(t0, 5) for t0 in (0, 5, 10, 15)])
    assert torch.allclose(w.mean(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(w[4:] / w[:-4], torch.full((16,), 0.5, dtype=torch.float64))  # halves every 4 steps
    assert torch.equal(MetaConfig(unroll=5, horizon=20).step_weights(5, 5), torch.ones(5, dtype=torch.float64))

    # the TBPTT meta-gradient of the second truncation (steps 6..10) is the gradient of the weighted losses
    def trainer(h):
        torch.manual_seed(0)
        lopt = LSTMOptimizer(hidden=3).double()
        cfg = MetaConfig(unroll=5, horizon=20, batch=3, weight_halflife=h)
        return MetaTrainer(lopt, QuadraticTask(dim=4, dtype=torch.float64), cfg)

    tr = trainer(4.0)
    tr.step()
    g = _check_meta_gradient(tr, lambda losses: (w[5:10, None] * losses).mean())
    tr0 = trainer(0.0)
    tr0.step()
    _, g0, _ = tr0.meta_gradient()
    assert not torch.allclose(g, _flat_grad(g0))
    with pytest.raises(ValueError, match="weight_halflife"):
        MetaConfig(weight_halflife=-1.0)


def test_meta_lr_decay_follows_the_cosine_schedule_and_stops_updates_at_zero():
    cfg = MetaConfig(meta_lr=2e-3, meta_lr_decay=4)
    lrs = [cfg.meta_lr_at(s) for s in range(6)]
    assert lrs[0] == 2e-3 and lrs[2] == pytest.approx(1e-3) and lrs[4] == lrs[5] == 0.0
    assert all(a > b for a, b in zip(lrs[:4], lrs[1:5]))  # strictly decreasing until D
    assert MetaConfig(meta_lr=2e-3).meta_lr_at(1000) == 2e-3
    torch.manual_seed(0)
    tr = MetaTrainer(LSTMOptimizer(hidden=3).double(), QuadraticTask(dim=4, dtype=torch.float64),
                     MetaConfig(unroll=5, horizon=20, batch=3, meta_lr_decay=2))
    flat = lambda: torch.nn.utils.parameters_to_vector(tr.lopt.parameters()).detach().clone()  # noqa: E731
    w0 = flat()
    tr.step()
    tr.step()  # learning rates 2e-3 * (1, 0.5): the weights move
    w2 = flat()
    tr.step()  # learning rate 0 from meta-step 2 on: Adam applies no update
    assert not torch.equal(w0, w2) and torch.equal(w2, flat())
    with pytest.raises(ValueError, match="meta_lr_decay"):
        MetaConfig(meta_lr_decay=-1)


def test_log_meta_loss_is_the_mean_log_loss_and_enters_the_meta_gradient():
    losses = torch.tensor([[1.0, 4.0], [0.01, 0.5]], dtype=torch.float64)
    cfg = MetaConfig(unroll=2, horizon=4, log_loss=True, weight_halflife=2.0)
    w = cfg.step_weights(0, 2)
    assert torch.allclose(cfg.weighted_loss(losses, 0), (w[:, None] * torch.log(losses + 1e-8)).mean())

    def grad(log_loss):
        torch.manual_seed(0)
        tr = MetaTrainer(LSTMOptimizer(hidden=3).double(), QuadraticTask(dim=4, dtype=torch.float64),
                         MetaConfig(unroll=5, horizon=10, batch=3, log_loss=log_loss))
        return _check_meta_gradient(tr, lambda f: (torch.log(f + 1e-8) if log_loss else f).mean())

    assert not torch.allclose(grad(True), grad(False))


def test_tbptt_memory_is_bounded_by_truncation_not_horizon():
    def saved(unroll, horizon):
        torch.manual_seed(0)
        tr = MetaTrainer(LSTMOptimizer(), QuadraticTask(), MetaConfig(unroll=unroll, horizon=horizon, batch=4))
        for _ in range(horizon // unroll):
            tr.step()
        return tr.peak_saved_bytes

    s5_20, s5_40, s10_20 = saved(5, 20), saved(5, 40), saved(10, 20)
    assert s5_20 == s5_40 > 0
    assert 1.8 < s10_20 / s5_20 < 2.2


def test_nonfinite_meta_step_is_skipped_counted_and_trajectory_reset():
    torch.manual_seed(0)
    task = QuadraticTask()
    tr = MetaTrainer(MLPOptimizer(hidden=8), task, MetaConfig(unroll=2, horizon=10, batch=3))
    tr.step()
    before = {k: v.clone() for k, v in tr.lopt.state_dict().items()}
    trajectories = tr.trajectories
    orig = task.eval_batch
    task.eval_batch = lambda inst, gen: do.learned.LeastSquaresContext(inst.W, inst.y * float("nan"))
    info = tr.step()
    task.eval_batch = orig
    assert info.skipped and tr.skipped == 1 and tr.meta_step == 2
    assert all(torch.equal(before[k], v) for k, v in tr.lopt.state_dict().items())
    assert tr.trajectories == trajectories + 1 and int(tr.carry.t) == 0
    assert not tr.step().skipped


def test_meta_training_improves_the_optimizer_on_quadratics():
    torch.manual_seed(0)
    task = QuadraticTask()
    lopt = MLPOptimizer()
    tr = MetaTrainer(lopt, task, MetaConfig(unroll=10, horizon=20, batch=16, meta_lr=1e-2, seed=0))

    def score():
        return float(rollout(lopt.as_solver(), task, 64, 20, torch.Generator().manual_seed(99))[1:].mean())

    untrained = score()
    for _ in range(60):
        tr.step()
    trained = score()
    assert trained < 0.5 * untrained, (untrained, trained)


def _parse(argv):
    from doubleopt.cli import build_parser

    return build_parser().parse_args(["train-lopt", *argv])


@pytest.mark.parametrize("method", ["tbptt", "pes"])
def test_train_lopt_resume_gives_the_same_weights(tmp_path, method):
    from doubleopt.learned import _cli

    common = [
        "--arch",
        "lstm",
        "--task",
        "quadratic",
        "--method",
        method,
        "--meta-steps",
        "6",
        "--unroll",
        "3",
        "--horizon",
        "6",
        "--batch",
        "2",
        "--es-pairs",
        "2",
        "--checkpoint-every",
        "2",
        "--no-progress",
        "--seed",
        "7",
    ]

    def no_weights_yet(cut):
        assert not (cut / "lstm-quadratic.safetensors").exists()

    train_lopt_full_and_resumed(common, tmp_path, stop_at=3, between=no_weights_yet)
    a = load_file(tmp_path / "full" / "lstm-quadratic.safetensors")
    b = load_file(tmp_path / "cut" / "lstm-quadratic.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    # resuming with other arguments is refused
    with pytest.raises(ValueError, match="same arguments"):
        _cli.run(_parse([*common[:-1], "8", "--out", str(tmp_path / "cut"), "--resume"]))


def test_load_pretrained_and_architecture_mismatch(tmp_path):
    lstm, mlp = load_pretrained("lstm-digits"), load_pretrained("mlp-digits")
    assert isinstance(lstm, LSTMOptimizer) and isinstance(mlp, MLPOptimizer)
    with pytest.raises(ValueError, match="cell1.weight_ih"):
        load_pretrained("mlp-digits", into=LSTMOptimizer())
    with pytest.raises(ValueError, match=r"'cell1.weight_ih' has shape \(80, 2\) in the file but \(160, 2\)"):
        load_pretrained("lstm-digits", into=LSTMOptimizer(hidden=40))
    with pytest.raises(ValueError, match="unknown pretrained"):
        load_pretrained("adam-digits")
    p = lstm.save_weights(tmp_path / "w.safetensors")
    again = load_pretrained(str(p))
    assert all(torch.equal(a, b) for a, b in zip(lstm.parameters(), again.parameters()))


def _digits_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 20), torch.nn.Sigmoid(), torch.nn.Linear(20, 10))


@pytest.mark.parametrize("name", ["lstm-digits", "mlp-digits"])
def test_torch_optimizer_trains_a_real_module_on_digits(name):
    Xtr, ytr = do.problems.load_dataset("digits", "train")
    Xte, yte = do.problems.load_dataset("digits", "test")
    model = _digits_model()
    opt = TorchOptimizer(model.named_parameters(), load_pretrained(name))
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = torch.randperm(len(Xtr), generator=gen)[:128]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx])
        loss.backward()
        opt.step()
    acc = float((model(Xte).argmax(-1) == yte).float().mean())
    assert acc >= 0.90, acc  # measured: 0.951 (LSTM), 0.940 (MLP); torch.optim.Adam(lr=0.1): 0.944


def test_torch_optimizer_state_dict_param_groups_and_nonfinite():
    model = _digits_model()
    X, y = do.problems.load_dataset("digits", "train")
    lopt = load_pretrained("mlp-digits")
    opt = TorchOptimizer([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.5}], lopt)

    def step(m, o):
        o.zero_grad()
        torch.nn.functional.cross_entropy(m(X[:64]), y[:64]).backward()
        o.step()

    for _ in range(3):
        step(model, opt)
    model2 = _digits_model()
    model2.load_state_dict(model.state_dict())
    opt2 = TorchOptimizer([{"params": model2[0].parameters()}, {"params": model2[2].parameters(), "lr": 0.5}], lopt)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state_dict()["param_groups"][1]["lr"] == 0.5
    step(model, opt)
    step(model2, opt2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    # zero_grad clears gradients
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    # a non-finite update names the parameter and leaves the model untouched
    named = TorchOptimizer(model.named_parameters(), lopt)
    before = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.cross_entropy(model(X[:8]), y[:8]).backward()
    model[2].bias.grad[3] = float("nan")
    with pytest.raises(FloatingPointError, match="'2.bias'"):
        named.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(TypeError, match="LearnedOptimizer"):
        TorchOptimizer(model.parameters(), torch.optim.Adam)


def test_cli_parser_has_train_lopt():
    args = _parse(["--arch", "mlp"])
    assert isinstance(args, argparse.Namespace) and args.arch == "mlp" and args.method == "tbptt"


def test_bench_lopt_quick_smoke(tmp_path):
    from doubleopt.bench import run_study

    goals = run_study("lopt", ["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "lopt.png").exists() and (tmp_path / "table.md").exists()
    assert set(goals) == {"LSTM (learned)", "MLP (learned)"}
    # the standard protocol: trained on the training digits, scored on held-out digits, over widths, depths,
    # activations and horizons (quick: 2 each), with a plain verdict against tuned Adam on every row
    import json

    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    standard = [r for r in rows if r["protocol"].startswith("standard")]
    assert {r["task"] for r in standard} == {"base (1x20 sigmoid, 6 steps)", "width 40", "depth 2x20",
                                             "activation relu", "horizon 12 steps"}
    assert all(0.0 <= r["heldout_accuracy"] <= 1.0 for r in standard)
    learned_rows = [r for r in standard if "learned" in r["optimizer"]]
    assert all(r["vs_tuned_adam"] in ("loses to tuned Adam", "beats tuned Adam", "ties tuned Adam (within 2 s.e.)")
               for r in learned_rows)
    assert all(r["lr_tuned_on"] == "validation rows of the training digits" for r in standard
               if "learned" not in r["optimizer"])


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        MetaConfig(method="sgd")
    with pytest.raises(ValueError, match="multiple of unroll"):
        MetaConfig(unroll=30, horizon=100)
    with pytest.raises(ValueError, match="lr must be > 0"):
        TorchOptimizer(torch.nn.Linear(2, 1).parameters(), MLPOptimizer(), lr=0.0)
    with pytest.raises(ValueError, match="hidden must be >= 1"):
        LSTMOptimizer(hidden=0)
