"""PPO for the Li & Malik policy (issue 15): GAE and the clipped objective against direct computations, the
protocol mapping (one minibatch per meta-step, the value network's Adam), improvement on the logistic family,
non-finite transitions, bit-for-bit resume, and the train-lopt command's policy options."""

from __future__ import annotations

import doctest
import json
import math

import pytest
import torch
from helpers import train_lopt_full_and_resumed
from safetensors.torch import load_file

import doubleopt as do
from doubleopt.learned import LSTMOptimizer, ObjectiveSetTask, OptimizationEnv, PolicyOptimizer, li_malik_task
from doubleopt.learned.meta import MetaConfig, MetaTrainer, meta_train
from doubleopt.learned.ppo import PPO, ValueNet, clipped_surrogate, generalized_advantages

F64 = torch.float64


# ---- GAE and the clipped objective ---------------------------------------------------------------------------
def test_gae_matches_the_discounted_sum_of_td_errors():
    gen = torch.Generator().manual_seed(0)
    B, T, gamma, lam = 3, 7, 0.9, 0.8
    r = torch.randn(B, T, generator=gen, dtype=F64)
    v = torch.randn(B, T + 1, generator=gen, dtype=F64)
    d = torch.rand(B, T, generator=gen) < 0.25
    d[:, -1] = True
    got = generalized_advantages(r, v, d, gamma, lam)
    for b in range(B):
        delta = [float(r[b, t] + gamma * v[b, t + 1] * (1 - int(d[b, t])) - v[b, t]) for t in range(T)]
        for t in range(T):
            # A_t = sum_l (gamma lam)^l delta_{t+l}, up to and including the first terminal transition
            ref, w = 0.0, 1.0
            for s in range(t, T):
                ref += w * delta[s]
                if d[b, s]:
                    break
                w *= gamma * lam
            assert math.isclose(float(got[b, t]), ref, rel_tol=1e-12, abs_tol=1e-12), (b, t)
    # gamma = lam = 1, no terminal: A_t + V_t is the return-to-go plus the bootstrap value
    none = torch.zeros(B, T, dtype=torch.bool)
    ret = generalized_advantages(r, v, none, 1.0, 1.0) + v[:, :T]
    ref = r.flip(-1).cumsum(-1).flip(-1) + v[:, T:]
    assert torch.allclose(ret, ref, atol=1e-12)
    with pytest.raises(ValueError, match=r"values must be \(\.\.\., T \+ 1\)"):
        generalized_advantages(r, v[:, :T], d, gamma, lam)


def _tiny_batch():
    torch.manual_seed(0)
    policy = PolicyOptimizer(history=2, hidden=4).double()
    gen = torch.Generator().manual_seed(1)
    M, n = 8, 3
    z = torch.randn(M, n, 6, generator=gen, dtype=F64)
    u = torch.randn(M, n, generator=gen, dtype=F64)
    adv = torch.tensor([1.0, -1.0, 2.0, -0.5, 1.5, -2.0, 0.3, -0.7], dtype=F64)
    # old log-probs so that the ratios are 1.5, 0.5 (outside the clip range, both signs of A) and 1.1, 0.9 (inside)
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1, 0.9, 1.1, 0.9], dtype=F64)
    with torch.no_grad():
        old = policy.log_prob(z, u) - ratio.log()
    return policy, z, u, old, adv, ratio


def test_clipped_objective_gradient_matches_a_direct_computation():
    policy, z, u, old, adv, ratio = _tiny_batch()
    params = list(policy.parameters())
    M, eps = len(adv), 0.2
    loss = PPO(clip_ratio=eps).policy_loss(policy, z, u, old, adv)
    got = torch.autograd.grad(loss, params)
    # direct: the objective's gradient is -A r grad log pi where the unclipped term is the minimum, else 0
    active = ~(((adv > 0) & (ratio > 1 + eps)) | ((adv < 0) & (ratio < 1 - eps)))
    assert active.tolist() == [False, True, True, False, True, True, True, True]
    ref = [torch.zeros_like(p) for p in params]
    for m in range(M):
        g = torch.autograd.grad(policy.log_prob(z[m : m + 1], u[m : m + 1]).sum(), params)
        for acc, gm in zip(ref, g):
            acc -= float(active[m]) * float(adv[m] * ratio[m]) * gm / M
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, atol=1e-12)
    # the value: clipped terms use 1 +- eps
    clipped = torch.where(active, ratio, ratio.clamp(1 - eps, 1 + eps))
    assert torch.isclose(loss, -(clipped * adv).mean())
    assert torch.isclose(clipped_surrogate(policy.log_prob(z, u), old, adv, eps), loss)
    # the entropy bonus adds -beta * n to the log-std's gradient (a Gaussian's entropy is n log sigma + const)
    with_ent = PPO(clip_ratio=eps, ent_coef=0.1).policy_loss(policy, z, u, old, adv)
    g_ent = torch.autograd.grad(with_ent, [policy.log_std])[0]
    g_plain = torch.autograd.grad(PPO(clip_ratio=eps).policy_loss(policy, z, u, old, adv), [policy.log_std])[0]
    assert torch.isclose(g_ent - g_plain, torch.tensor(-0.1 * 3, dtype=F64))


def _trainer(batch=4, horizon=6, seed=0, task=None, policy=None, **options):
    torch.manual_seed(seed)
    policy = policy or PolicyOptimizer(history=3, hidden=8)
    task = task or li_malik_task("logistic")
    options = {"epochs": 2, "minibatches": 2, **options}
    cfg = MetaConfig(method="ppo", unroll=horizon, horizon=horizon, batch=batch, seed=seed, options=options)
    return MetaTrainer(policy, task, cfg)


def test_each_meta_step_is_one_minibatch_of_the_clipped_objective_and_one_value_adam_step():
    tr = _trainer(batch=4, horizon=6, value_width=5)
    est, s0 = tr.estimator, tr.state
    assert int(s0.position) == est.updates_per_batch and s0.advantages.numel() == 0  # collected on first use
    w0 = s0.value_params.clone()
    ref_policy = PolicyOptimizer(history=3, hidden=8)
    ref_policy.load_state_dict(tr.lopt.state_dict())
    loss, grads, s1 = est.estimate(tr, s0)
    assert int(s1.position) == 1 and int(s1.episodes) == 4 and s1.advantages.shape == (24,)  # B * T transitions
    # the gradient is the clipped objective's on the first half of the permutation (2 minibatches), the
    # advantages standardized over that minibatch
    idx = torch.tensor_split(s1.perm, 2)[0]
    adv = s1.advantages[idx]
    adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)
    ref_loss = est.policy_loss(ref_policy, s1.features[idx], s1.actions[idx], s1.log_probs[idx], adv)
    ref = torch.autograd.grad(ref_loss, list(ref_policy.parameters()))
    assert loss == float(ref_loss.detach())
    assert all(torch.equal(a, b) for a, b in zip(grads, ref))
    # at collection, the old log-probs are the policy's log-density of the stored steps
    assert torch.allclose(s1.log_probs, ref_policy.log_prob(s1.features, s1.actions).detach(), atol=1e-5)
    # the value network took one torch.optim.Adam step on 0.5 mean (V - R)^2 of the same minibatch
    critic = ValueNet(features=9, width=5)
    w = torch.nn.Parameter(w0.clone())
    opt = torch.optim.Adam([w], lr=est.value_lr)
    (0.5 * (critic(w, s1.features[idx], s1.critic_inputs[idx]) - s1.returns[idx]).pow(2).mean()).backward()
    opt.step()
    assert torch.allclose(s1.value_params, w.detach(), atol=1e-7) and not torch.equal(s1.value_params, w0)
    # the next three meta-steps use the batch (2 epochs x 2 minibatches), the fifth collects a new one
    tr.state = s1
    for _ in range(3):
        tr.step()
    assert int(tr.state.position) == 4 and int(tr.state.episodes) == 4 and tr.trajectories == 1
    tr.step()
    assert int(tr.state.position) == 1 and int(tr.state.episodes) == 8 and tr.trajectories == 2


# ---- training improves the policy ---------------------------------------------------------------------------------
def _mean_policy_return(policy, task, horizon, count=30):
    """The undiscounted normalized return (module docstring) of the mean-action policy on fixed objectives."""
    env = OptimizationEnv(task, count, horizon=horizon, history=policy.history)
    x = do._tree.tree_index(task.contexts, torch.arange(count))
    y0 = task.problem.init(x, generator=torch.Generator().manual_seed(5))
    obs = env.reset(torch.Generator().manual_seed(0), objectives=x, y0=y0)
    f0 = env.state.history.values[:, 0].abs()
    ret = torch.zeros(count)
    with torch.no_grad():
        for _ in range(horizon):
            obs, reward, terminated, _ = env.step(policy.unit(env.state.history)[:, None] * policy.mean(obs))
            assert not bool(terminated.any())
            ret += (reward / f0).clamp(-2.0, 2.0) / horizon
    return float(ret.mean())


def test_ppo_improves_the_mean_return_on_the_logistic_family():
    task = li_malik_task("logistic")
    torch.manual_seed(0)
    policy = PolicyOptimizer(history=5, hidden=16)
    before = _mean_policy_return(policy, task, horizon=20)
    cfg = MetaConfig(method="ppo", unroll=20, horizon=20, batch=16, meta_lr=3e-3, seed=0)
    tr = meta_train(MetaTrainer(policy, task, cfg), 320, progress=False)  # 20 batches of 16 updates
    after = _mean_policy_return(policy, task, horizon=20)
    assert tr.skipped == 0 and int(tr.state.nonfinite) == 0 and int(tr.state.episodes) == 320
    # the initial policy drifts uphill (mean relative objective about 1); trained, it descends (seeds 0-2 give
    # -1.00 -> -0.72, -1.02 -> -0.69, -1.01 -> -0.64)
    assert before < -0.95 and after > before + 0.15, (before, after)


# ---- non-finite transitions -----------------------------------------------------------------------------------
class _Cliff(do.ProblemFamily):
    """f(y; R) = |y|^2 / 2 where max_i |y_i| < R, +inf beyond (a cliff at radius R per objective)."""

    dim = 2

    def objective(self, y, x):
        return torch.where(y.abs().amax(-1) < x, 0.5 * (y * y).sum(-1), torch.full_like(x, math.inf))

    def smooth_value_and_grad(self, y, x):
        return self.objective(y, x), y.clone()

    def init(self, x, generator=None):
        return torch.ones(x.shape[0], self.dim, dtype=x.dtype)


class _InOrder(ObjectiveSetTask):
    """Every reset draws all the objectives, in order."""

    def reset(self, batch_size, generator):
        return self.contexts, self.problem.init(self.contexts)


def test_nonfinite_transitions_are_charged_counted_and_end_the_episode():
    # the policy's mean step is u = 1 (in units of 0.1 s_g), so y_t = 1.1^t in every coordinate, f_t / f_0 =
    # 1.21^t; objectives with a cliff at 1.1^2.5 and 1.1^5.5 diverge at transitions t = 2 and t = 5
    policy = PolicyOptimizer(history=2, hidden=3, log_std=-12.0, learn_std=False)
    with torch.no_grad():
        policy.net[-1].weight.zero_()
        policy.net[-1].bias.fill_(1.0)
    radius = torch.tensor([1.1**2.5, 1.1**5.5, math.inf, math.inf])
    task = _InOrder(_Cliff(), radius)
    T, c = 10, 2.0
    tr = _trainer(batch=4, horizon=T, task=task, policy=policy, nonfinite_penalty=c)
    loss, grads, state = tr.estimator.estimate(tr, tr.state)
    assert int(state.nonfinite) == 2 and int(state.episodes) == 4
    assert state.advantages.shape == (3 + 6 + T + T,)  # the transitions up to and including the divergence
    for name in ("features", "actions", "log_probs", "critic_inputs", "advantages", "returns"):
        assert bool(torch.isfinite(getattr(state, name)).all()), name
    assert math.isfinite(loss) and all(bool(torch.isfinite(g).all()) for g in grads)

    # the undiscounted returns: -min(f_(t+1) / f_0, c) / T per finite transition, -c (T - t) / T at the divergence
    def episode_return(diverge_at):
        ret = 0.0
        for t in range(T):
            if t == diverge_at:
                return ret - c * (T - t) / T
            ret -= min(1.21 ** (t + 1), c) / T
        return ret

    ref = sum(episode_return(d) for d in (2, 5, None, None)) / 4
    assert math.isclose(float(state.mean_return), ref, rel_tol=1e-5)
    # the critic's progress input rho_t = f_t / f_0 (clipped at c) and remaining fraction (T - t) / T
    first = state.critic_inputs[:3]
    assert torch.allclose(first, torch.tensor([[1.0, 1.0], [1.21, 0.9], [1.4641, 0.8]]), atol=1e-5)
    # counted over batches: the next batch adds two more
    tr.state = state
    for _ in range(4):
        tr.step()
    assert int(tr.state.nonfinite) == 4 and tr.skipped == 0


def test_a_nonfinite_loss_is_skipped_and_the_batch_dropped():
    tr = _trainer()
    tr.step()
    with torch.no_grad():
        tr.lopt.net[0].weight[0, 0] = math.nan  # the policy's log-probs, and so the loss, become NaN
    info = tr.step()
    assert info.skipped and tr.skipped == 1
    assert int(tr.state.position) == tr.estimator.updates_per_batch  # the next meta-step collects anew


# ---- checkpoints, configuration errors and the command -----------------------------------------------------------
def test_train_lopt_ppo_resume_is_bit_for_bit(tmp_path):
    common = ["--arch", "policy", "--method", "ppo", "--task", "li-malik-logistic", "--hidden", "8"]
    common += ["--horizon", "6", "--unroll", "6", "--batch", "4", "--option", "epochs=2", "--option", "minibatches=2"]
    common += ["--meta-steps", "7", "--checkpoint-every", "2", "--no-progress", "--seed", "3"]
    # stopped at meta-step 3: the checkpoint of step 2 is mid-batch (second epoch's permutation not drawn yet)
    train_lopt_full_and_resumed(common, tmp_path, stop_at=3)
    a = load_file(tmp_path / "full" / "policy-li-malik-logistic.safetensors")
    b = load_file(tmp_path / "cut" / "policy-li-malik-logistic.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = load_file(tmp_path / "full" / "checkpoint.safetensors")
    cb = load_file(tmp_path / "cut" / "checkpoint.safetensors")
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)
    assert {"ppo.value_params", "ppo.value_exp_avg", "ppo.perm", "ppo.advantages", "ppo.nonfinite"} <= ca.keys()
    assert int(ca["ppo.episodes"]) == 8 and int(ca["counters"][0]) == 7
    rec = json.loads((tmp_path / "full" / "record.json").read_text())
    assert rec["meta_config"]["options"] == {"epochs": 2, "minibatches": 2}
    assert rec["estimator_counters"]["episodes"] == 8 and rec["estimator_counters"]["nonfinite"] == 0
    weights = PolicyOptimizer(hidden=8).load_weights(tmp_path / "full" / "policy-li-malik-logistic.safetensors")
    assert weights.hidden == 8


def test_ppo_refuses_other_optimizers_and_bad_settings():
    with pytest.raises(TypeError, match="trains a PolicyOptimizer.*got LSTMOptimizer"):
        MetaTrainer(LSTMOptimizer(), li_malik_task("logistic"), MetaConfig(method="ppo", batch=4))
    with pytest.raises(ValueError, match="minibatches \\(8\\) must be at most MetaConfig.batch \\(4\\)"):
        MetaConfig(method="ppo", batch=4, options={"minibatches": 8})
    with pytest.raises(ValueError, match="unknown option\\(s\\) \\['lr'\\] for method 'ppo'"):
        MetaConfig(method="ppo", options={"lr": 0.1})
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        MetaConfig(method="ppo", options={"epochs": 0})
    with pytest.raises(ValueError, match="clip_ratio must be in \\(0, 1\\)"):
        MetaConfig(method="ppo", options={"clip_ratio": 1.5})
    with pytest.raises(ValueError, match="gamma and gae_lambda must be in \\[0, 1\\]"):
        MetaConfig(method="ppo", options={"gae_lambda": 2.0})
    with pytest.raises(ValueError, match="stagger applies to method 'tbptt' only"):
        MetaConfig(method="ppo", batch=4, stagger=2)


def test_cli_policy_arch_li_malik_tasks_and_options(tmp_path, capsys):
    from doubleopt.cli import build_parser
    from doubleopt.learned._cli import build, run

    parser = build_parser()
    args = parser.parse_args(
        ["train-lopt", "--arch", "policy", "--method", "ppo", "--task", "li-malik-robust", "--option", "gamma=0.99"]
        + ["--option", "normalize_advantages=false", "--option", "epochs=3", "--batch", "8"]
    )
    tr = build(args)
    assert isinstance(tr.lopt, PolicyOptimizer) and tr.lopt.hidden == 50
    assert tr.task.name == "li-malik-robust-train" and tr.task.size == 90
    assert tr.estimator == PPO(gamma=0.99, normalize_advantages=False, epochs=3)
    with pytest.raises(SystemExit):  # --method choices are the registered estimators
        parser.parse_args(["train-lopt", "--method", "nosuch"])
    assert "'ppo'" in capsys.readouterr().err
    out = tmp_path / "o"
    run(
        parser.parse_args(
            ["train-lopt", "--arch", "policy", "--method", "ppo", "--task", "li-malik-mlp", "--meta-steps", "3"]
            + ["--horizon", "5", "--unroll", "5", "--batch", "2", "--hidden", "6", "--option", "minibatches=2"]
            + ["--no-progress", "--out", str(out)]
        )
    )
    assert (out / "policy-li-malik-mlp.safetensors").exists()
    rec = json.loads((out / "record.json").read_text())
    assert rec["meta_steps"] == 3 and rec["meta_config"]["options"] == {"minibatches": 2}
    # an unknown option name is a ValueError naming the known ones; bad syntax an argparse error
    with pytest.raises(ValueError, match="unknown option\\(s\\) \\['epoch'\\] for method 'ppo'; it takes \\["):
        build(parser.parse_args(["train-lopt", "--arch", "policy", "--method", "ppo", "--option", "epoch=3"]))
    for bad, msg in (("epochs", "expected NAME=VALUE"), ("gamma=high", "must be an int, a float or true/false")):
        with pytest.raises(SystemExit):
            parser.parse_args(["train-lopt", "--method", "ppo", "--option", bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert msg in err[-1] and err[-1].startswith("doubleopt train-lopt: error: argument --option")


@pytest.mark.parametrize("module", ["doubleopt.learned.ppo", "doubleopt.learned._cli"])
def test_docstring_examples_run(module):
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
