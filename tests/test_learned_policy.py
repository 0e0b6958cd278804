"""Issue 15 foundation: the Li & Malik policy optimizer, the optimization MDP, its gymnasium / SB3 adapters and
the paper's three problem families (checked against direct computations)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

import doubleopt as do
from doubleopt._tree import tree_tensors
from doubleopt.learned import (
    LSTMOptimizer,
    ObjectiveSetTask,
    OptimizationEnv,
    OptimizationVectorEnv,
    PolicyFeatures,
    PolicyOptimizer,
    TorchOptimizer,
    li_malik_task,
    load_pretrained,
)
from doubleopt.problems import MixtureLogisticRegression, MixtureMLPClassifier, MixtureRobustRegression

F64 = torch.float64


# ---- direct (loop / NumPy) references -----------------------------------------------------------------------
def _softplus(z):
    return np.logaddexp(0.0, z)


def _logistic_np(y, X, t, l2):
    out = []
    for b in range(len(y)):
        z = X[b] @ y[b, :-1] + y[b, -1]
        out.append(np.mean(_softplus(z) - t[b] * z) + 0.5 * l2 * np.sum(y[b] ** 2))
    return np.array(out)


def _robust_np(y, X, t):
    out = []
    for b in range(len(y)):
        r = X[b] @ y[b, :-1] + y[b, -1] - t[b]
        out.append(np.mean(r**2 / (r**2 + 1.0)))
    return np.array(out)


def _mlp_np(y, X, labels, d, h, l2):
    out = []
    for b in range(len(y)):
        k = 0
        W1 = y[b, k : k + d * h].reshape(d, h)
        k += d * h
        b1 = y[b, k : k + h]
        k += h
        W2 = y[b, k : k + h * 2].reshape(h, 2)
        k += 2 * h
        b2 = y[b, k : k + 2]
        logits = np.maximum(X[b] @ W1 + b1, 0.0) @ W2 + b2
        logp = logits - np.logaddexp(logits[:, 0], logits[:, 1])[:, None]
        ce = -np.mean(logp[np.arange(len(X[b])), labels[b]])
        out.append(ce + 0.5 * l2 * (np.sum(W1**2) + np.sum(W2**2)))
    return np.array(out)


def _features_direct(fs, gs, steps, H, eps):
    """The policy features of the last iterate from plain lists: f_0..f_t (floats), g_0..g_t and the steps
    a_0..a_(t-1) (arrays (n,)); a loop over the definition in the policy module's docstring."""
    t, n = len(fs) - 1, len(gs[0])

    def rms(v):
        return math.sqrt(float(np.mean(np.asarray(v) ** 2)))

    s_g = max([eps] + [rms(g) for g in gs])
    s_u = max([eps] + [rms(a) for a in steps])
    out = np.zeros((n, 3 * H))
    for k in range(H):
        if t - k >= 0:
            out[:, k] = gs[t - k] / s_g
    for k in range(1, H + 1):
        if t - k >= 0:
            out[:, H + k - 1] = steps[t - k] / s_u
        f_past = fs[max(t - k, 0)]
        out[:, 2 * H + k - 1] = (fs[t] - f_past) / (abs(fs[t]) + abs(f_past) + eps)
    return out


class _Linear(do.Problem):
    """f(y; c) = sum_i c_i y_i (unbounded below: a policy that keeps stepping stays finite or overflows)."""

    dim = 3

    def objective(self, y, x):
        return (x * y).sum(-1)


# ---- the three families ---------------------------------------------------------------------------------------
def test_families_objectives_match_direct_computation():
    gen = torch.Generator().manual_seed(0)
    fam = MixtureLogisticRegression(dtype=F64)
    x = fam.sample(4, seed=1)
    y = torch.randn(4, fam.dim, generator=gen, dtype=F64)
    ref = _logistic_np(y.numpy(), x.features.numpy(), x.targets.numpy(), fam.l2)
    assert np.allclose(fam.objective(y, x).numpy(), ref, rtol=1e-12)
    assert x.features.shape == (4, 100, 3) and x.targets.sum(-1).tolist() == [50.0] * 4  # half from each cluster

    fam = MixtureRobustRegression(dtype=F64)
    x = fam.sample(4, seed=2)
    y = torch.randn(4, fam.dim, generator=gen, dtype=F64)
    assert np.allclose(fam.objective(y, x).numpy(), _robust_np(y.numpy(), x.features.numpy(), x.targets.numpy()))

    fam = MixtureMLPClassifier(dtype=F64)
    x = fam.sample(4, seed=3)
    y = fam.init(x, generator=gen)
    ref = _mlp_np(y.numpy(), x.inputs.numpy(), x.labels.numpy(), fam.n_inputs, 4, fam.l2)
    assert np.allclose(fam.objective(y, x).numpy(), ref, rtol=1e-10)
    assert (x.labels == 0).sum(-1).tolist() == [50] * 4

    # analytic gradients (logistic, robust) equal autograd of the objective
    for fam in (MixtureLogisticRegression(dtype=F64), MixtureRobustRegression(dtype=F64)):
        x = fam.sample(3, seed=4)
        y = torch.randn(3, fam.dim, generator=gen, dtype=F64, requires_grad=True)
        (g_ad,) = torch.autograd.grad(fam.objective(y, x).sum(), y)
        assert torch.allclose(fam.smooth_value_and_grad(y.detach(), x)[1], g_ad, atol=1e-12)


def test_mixture_data_are_seeded_clustered_and_split():
    X, c = do.problems.gaussian_mixture(3, 100, 3, 4, torch.Generator().manual_seed(5))
    X2, _ = do.problems.gaussian_mixture(3, 100, 3, 4, torch.Generator().manual_seed(5))
    assert torch.equal(X, X2) and torch.bincount(c[0]).tolist() == [25] * 4
    # each cluster has its own mean: the within-cluster spread is smaller than the overall spread
    within = torch.stack([X[0][c[0] == k].var(0).sum() for k in range(4)]).mean()
    assert within < X[0].var(0).sum()
    # robust regression: one linear model per cluster fits its targets to the noise level
    fam = MixtureRobustRegression(dtype=F64, noise=0.1)
    x = fam.sample(1, seed=0)
    cluster = torch.arange(100) % 4  # point j is in cluster j mod 4
    for k in range(4):
        m = cluster == k
        Z = torch.cat([x.features[0][m], torch.ones(int(m.sum()), 1, dtype=F64)], 1)
        coef = torch.linalg.lstsq(Z, x.targets[0][m][:, None]).solution
        assert float(((Z @ coef)[:, 0] - x.targets[0][m]).pow(2).mean()) < 0.05
    with pytest.raises(ValueError, match="n_clusters"):
        do.problems.gaussian_mixture(1, 3, 2, 4, torch.Generator())

    for family, dim in (("logistic", 4), ("robust", 4), ("mlp", 22)):
        train, test = li_malik_task(family, "train"), li_malik_task(family, "test")
        assert (train.size, test.size, train.problem.dim) == (90, 100, dim)
        a, b = tree_tensors(train.contexts)[0], tree_tensors(test.contexts)[0]
        assert not any(bool((a[i] == b).flatten(1).all(1).any()) for i in range(len(a)))  # disjoint splits
        again = li_malik_task(family, "train")
        assert torch.equal(tree_tensors(again.contexts)[0], a)  # seeded
    with pytest.raises(ValueError, match="unknown family"):
        li_malik_task("quadratic")


# ---- features and policy --------------------------------------------------------------------------------------
def test_features_match_a_direct_history():
    H, n, eps = 3, 2, 1e-12
    feats = PolicyFeatures(history=H, eps=eps)
    gen = torch.Generator().manual_seed(0)
    fs = [float(v) for v in torch.rand(6, generator=gen, dtype=F64) * 4 - 1]  # some negative objective values
    gs = [torch.randn(n, generator=gen, dtype=F64) for _ in range(6)]
    steps = [torch.randn(n, generator=gen, dtype=F64) * 0.1 * (i + 1) for i in range(5)]
    state = feats.init(torch.tensor([fs[0]], dtype=F64), gs[0][None])
    for t in range(6):  # t < H (padded) and t >= H (shifted out)
        if t > 0:
            state = feats.push(state, torch.tensor([fs[t]], dtype=F64), gs[t][None], steps[t - 1][None])
        ref = _features_direct(fs[: t + 1], [g.numpy() for g in gs[: t + 1]], [a.numpy() for a in steps[:t]], H, eps)
        assert np.allclose(feats(state)[0].numpy(), ref, rtol=1e-12, atol=1e-14), t
    # scale-free: multiplying f (and so g) by 1000 leaves the features unchanged
    s2 = feats.init(torch.tensor([1000 * fs[0]], dtype=F64), 1000 * gs[0][None])
    s1 = feats.init(torch.tensor([fs[0]], dtype=F64), gs[0][None])
    for t in range(1, 4):
        s1 = feats.push(s1, torch.tensor([fs[t]], dtype=F64), gs[t][None], steps[t - 1][None])
        s2 = feats.push(s2, torch.tensor([1000 * fs[t]], dtype=F64), 1000 * gs[t][None], steps[t - 1][None])
    assert torch.allclose(feats(s1), feats(s2))
    with pytest.raises(ValueError, match="history"):
        PolicyFeatures(history=0)


def test_history_or_feature_size_mismatch_is_a_value_error():
    policy = PolicyOptimizer(history=5)
    z = torch.zeros(2, 3, 3 * 4)
    with pytest.raises(ValueError, match=r"history H = 5.*history 4"):
        policy.mean(z)
    state = PolicyFeatures(history=4).init(torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="history H = 5"):
        policy.mean_step(state)
    env = OptimizationEnv(li_malik_task("logistic"), batch_size=2, history=4, horizon=3)
    obs = env.reset(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="history=5"):
        policy.mean(obs)
    with pytest.raises(ValueError, match="action must be"):
        env.step(torch.zeros(2, 5))


def test_policy_solves_batched_through_the_loop():
    torch.manual_seed(0)
    policy = PolicyOptimizer(history=4)
    fam = MixtureLogisticRegression()
    x = fam.sample(5, seed=0)
    y0 = fam.init(x, torch.Generator().manual_seed(1))
    sol = do.solve(fam, policy.as_solver(), x, y0, max_steps=7, throw=False)
    assert sol.y.shape == (5, 4) and sol.num_steps.tolist() == [7] * 5
    assert (sol.result == do.RESULTS.max_steps_reached).all()
    assert sol.state.rule.grads.shape == (5, 4, 4)
    # batched equals one instance alone
    x2 = do.problems.RegressionContext(x.features[2:3], x.targets[2:3])
    sol2 = do.solve(fam, policy.as_solver(), x2, y0[2:3], max_steps=7, throw=False)
    assert torch.allclose(sol.y[2:3], sol2.y, atol=1e-5)
    # a loose tolerance stops every instance successfully, at once
    sol = do.solve(fam, policy.as_solver(), x, y0, max_steps=7, tol=1e6)
    assert (sol.result == do.RESULTS.successful).all() and sol.num_steps.tolist() == [0] * 5
    # any dimension (coordinatewise): the MLP family (n = 22) with the same policy
    mlp = MixtureMLPClassifier()
    xm = mlp.sample(3, seed=0)
    assert do.solve(mlp, policy.as_solver(), xm, mlp.init(xm), max_steps=3, throw=False).y.shape == (3, 22)


def test_solver_and_environment_take_the_same_steps():
    policy = PolicyOptimizer(history=3, step_scale=0.5)
    task = li_malik_task("robust")
    env = OptimizationEnv(task, batch_size=4, history=3, horizon=6)
    x, y0 = task.reset(4, torch.Generator().manual_seed(3))
    obs = env.reset(torch.Generator(), objectives=x, y0=y0)
    assert torch.equal(env.state.y, y0)
    with pytest.raises(ValueError, match="both"):
        env.reset(torch.Generator(), objectives=x)
    rewards = []
    with torch.no_grad():
        for _ in range(6):
            obs, reward, _, _ = env.step(policy.step_scale * env.grad_scale[:, None] * policy.mean(obs))
            rewards.append(reward)
        sol = do.solve(task.problem, policy.as_solver(), x, y0, max_steps=6, tol=0.0, throw=False, trace=True)
    assert torch.allclose(sol.y, env.state.y, atol=1e-5)
    assert torch.allclose(sol.trace[1:], -torch.stack(rewards), rtol=1e-5)


def test_unrolled_solve_gradient_matches_finite_differences():
    torch.manual_seed(0)
    policy = PolicyOptimizer(history=2, hidden=3, step_scale=0.3, log_std=-2.0).double()
    fam = MixtureLogisticRegression(n_points=12, dtype=F64)
    x = fam.sample(2, seed=0)
    y0 = fam.init(x, torch.Generator().manual_seed(0))
    params = [p for p in policy.parameters() if p is not policy.log_std]  # the mean step does not use log_std

    def loss():
        sol = do.solve(fam, policy.as_solver(), x, y0, adjoint=do.Unroll(), max_steps=4, throw=False)
        return sol.value.sum()

    grads = torch.autograd.grad(loss(), params)
    flat = torch.cat([g.reshape(-1) for g in grads])
    assert bool(flat.abs().sum() > 0)
    vec = torch.nn.utils.parameters_to_vector(params).detach()
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        d = torch.randn(vec.shape, generator=gen, dtype=F64)
        h = 1e-6
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(vec + h * d, params)
            fp = loss()
            torch.nn.utils.vector_to_parameters(vec - h * d, params)
            fm = loss()
            torch.nn.utils.vector_to_parameters(vec, params)
        fd = (fp - fm) / (2 * h)
        assert torch.allclose(fd, flat @ d, rtol=1e-5, atol=1e-9), (float(fd), float(flat @ d))


def test_meta_gradient_training_drives_the_policy_too():
    """The policy is a LearnedOptimizer whose solver the meta-training loop runs (TBPTT on the paper's tasks)."""
    from doubleopt.learned.meta import MetaConfig, MetaTrainer

    torch.manual_seed(0)
    policy = PolicyOptimizer(history=3, hidden=8)
    before = [p.detach().clone() for p in policy.net.parameters()]
    tr = MetaTrainer(policy, li_malik_task("logistic"), MetaConfig(unroll=5, horizon=10, batch=4, meta_lr=1e-2))
    infos = [tr.step() for _ in range(3)]
    assert not any(i.skipped for i in infos) and all(math.isfinite(i.loss) for i in infos)
    assert any(not torch.equal(a, b) for a, b in zip(policy.net.parameters(), before))


def test_nonfinite_step_stops_only_that_instance():
    policy = PolicyOptimizer(history=2, step_scale=10.0)
    with torch.no_grad():  # the mean step is 1e38 in units of 10 * rms(gradient): inf where rms(gradient) = 1
        policy.net[-1].weight.zero_()
        policy.net[-1].bias.fill_(1e38)
    c = torch.tensor([[1e-6] * 3, [1.0] * 3, [2e-6] * 3])
    # tol=0: the tiny gradients of instances 0 and 2 are not convergence
    sol = do.solve(_Linear(), policy.as_solver(), c, torch.zeros(3, 3), max_steps=5, tol=0.0, throw=False)
    assert sol.result.tolist() == [do.RESULTS.max_steps_reached, do.RESULTS.nonfinite, do.RESULTS.max_steps_reached]
    assert sol.num_steps.tolist() == [5, 1, 5]
    assert torch.equal(sol.y[1], torch.zeros(3))  # the last finite iterate
    assert bool(torch.isfinite(sol.y[[0, 2]]).all()) and bool((sol.y[[0, 2]] > 1e30).all())
    with pytest.raises(do.SolveError, match="nonfinite") as err:
        do.solve(_Linear(), policy.as_solver(), c, torch.zeros(3, 3), max_steps=5, tol=0.0)
    assert err.value.failed == [0, 1, 2] and int(err.value.result[1]) == do.RESULTS.nonfinite


def test_sampling_mode_is_seeded_and_log_prob_is_gaussian():
    policy = PolicyOptimizer(history=3, log_std=-0.5)
    fam = MixtureRobustRegression()
    x = fam.sample(3, seed=0)
    with pytest.raises(ValueError, match="Generator"):
        policy.as_solver(sample=True)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return do.solve(fam, policy.as_solver(sample=True, generator=g), x, max_steps=5, throw=False).y

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    z = torch.randn(3, 4, 9, generator=torch.Generator().manual_seed(2))
    u, logp = policy.sample(z, torch.Generator().manual_seed(3))
    ref = torch.distributions.Normal(policy.mean(z), math.exp(-0.5)).log_prob(u).sum(-1)
    assert torch.allclose(logp, ref, atol=1e-5)
    (g,) = torch.autograd.grad(logp.sum(), policy.log_std)  # the score w.r.t. log sigma exists
    assert torch.isfinite(g)


def test_weights_round_trip_and_mismatches_name_the_problem(tmp_path):
    torch.manual_seed(0)
    policy = PolicyOptimizer(history=4, hidden=6, step_scale=0.2, learn_std=False)
    path = policy.save_weights(tmp_path / "policy.safetensors")
    loaded = load_pretrained(str(path))
    assert isinstance(loaded, PolicyOptimizer) and loaded.config() == policy.config()
    z = torch.randn(2, 3, 12)
    assert torch.equal(loaded.mean(z), policy.mean(z))
    with pytest.raises(ValueError, match=r"history H = 4 .*'net.0.weight'.*history H = 7"):
        PolicyOptimizer(history=7, hidden=6).load_weights(path)
    LSTMOptimizer(hidden=3).save_weights(tmp_path / "lstm.safetensors")
    with pytest.raises(ValueError, match=r"architecture 'lstm'.*tensor '[a-z_.0-9]+'"):
        PolicyOptimizer().load_weights(tmp_path / "lstm.safetensors")
    with pytest.raises(ValueError, match=r"tensor 'net.0.weight' has shape"):
        PolicyOptimizer(history=4, hidden=5).load_weights(path)
    with pytest.raises(TypeError, match="objective values"):
        TorchOptimizer(torch.nn.Linear(2, 1).parameters(), policy)
    with pytest.raises(TypeError, match="as_solver"):
        policy.update(torch.zeros(1, 2), None, torch.zeros(1, 2))


# ---- the MDP ----------------------------------------------------------------------------------------------------
def test_environment_transitions_match_a_direct_computation():
    fam = MixtureLogisticRegression(dtype=F64)
    task = ObjectiveSetTask(fam, fam.sample(6, seed=0))
    H, T, B = 3, 4, 3
    env = OptimizationEnv(task, batch_size=B, history=H, horizon=T)
    obs = env.reset(torch.Generator().manual_seed(0))
    X, t_lab = env.state.inst.features.numpy(), env.state.inst.targets.numpy()
    y = env.state.y.numpy().copy()
    actions = 0.3 * torch.randn(T, B, fam.dim, generator=torch.Generator().manual_seed(9), dtype=F64)

    def f_and_g(yb, b):  # the objective written out for one instance, gradient by autograd
        yt = torch.tensor(yb, requires_grad=True)
        z = torch.tensor(X[b]) @ yt[:-1] + yt[-1]
        f = (torch.nn.functional.softplus(z) - torch.tensor(t_lab[b]) * z).mean() + 0.5 * fam.l2 * (yt * yt).sum()
        (g,) = torch.autograd.grad(f, yt)
        return float(f.detach()), g.numpy()

    hist = [[f_and_g(y[b], b)] for b in range(B)]
    for b in range(B):
        assert np.allclose(obs[b].numpy(), _features_direct([hist[b][0][0]], [hist[b][0][1]], [], H, 1e-12))
    for t in range(T):
        obs, reward, terminated, truncated = env.step(actions[t])
        y = y + actions[t].numpy()
        for b in range(B):
            f, g = f_and_g(y[b], b)
            hist[b].append((f, g))
            assert math.isclose(float(reward[b]), -f, rel_tol=1e-12)
            ref = _features_direct(
                [h[0] for h in hist[b]], [h[1] for h in hist[b]], [a[b].numpy() for a in actions[: t + 1]], H, 1e-12
            )
            assert np.allclose(obs[b].numpy(), ref, rtol=1e-10, atol=1e-12), (t, b)
        assert not terminated.any() and truncated.tolist() == [t == T - 1] * B
    assert np.allclose(env.state.y.numpy(), y)
    # partial reset: only the masked instances start over
    y_before = env.state.y.clone()
    env.reset(torch.Generator().manual_seed(1), mask=torch.tensor([True, False, False]))
    assert env.state.t.tolist() == [0, T, T] and torch.equal(env.state.y[1:], y_before[1:])
    # a non-finite step terminates that instance, with a non-finite reward
    _, reward, terminated, _ = env.step(torch.tensor([[0.0] * 4, [math.inf] * 4, [0.0] * 4], dtype=F64))
    assert terminated.tolist() == [False, True, False] and not math.isfinite(float(reward[1]))


def test_gymnasium_vector_env_adapter():
    env = OptimizationEnv(li_malik_task("logistic"), batch_size=3, history=5, horizon=2)
    venv = OptimizationVectorEnv(env, step_scale=0.1, seed=0)
    obs, info = venv.reset(seed=4)
    assert obs.shape == (3, 4 * 15) and obs.dtype == np.float32 and info == {}
    assert venv.observation_space.contains(obs)
    assert np.array_equal(obs, env.observation().reshape(3, -1).numpy())  # coordinate-major flattening
    obs_again, _ = OptimizationVectorEnv(OptimizationEnv(li_malik_task("logistic"), 3, history=5, horizon=2)).reset(
        seed=4
    )
    assert np.array_equal(obs, obs_again)
    # the action is the step in units of step_scale * (gradient scale)
    u = np.full((3, 4), 0.5, np.float32)
    y0, s_g = env.state.y.clone(), env.grad_scale.clone()
    obs, reward, terminated, truncated, info = venv.step(u)
    assert torch.allclose(env.state.y - y0, 0.1 * s_g[:, None] * 0.5)
    assert reward.shape == (3,) and not terminated.any() and not truncated.any() and info == {}
    # the horizon: same-step autoreset, final observation in info
    obs, reward, terminated, truncated, info = venv.step(u)
    assert truncated.all() and info["_final_obs"].all() and info["final_obs"].shape == (3, 60)
    assert env.state.t.tolist() == [0, 0, 0] and np.array_equal(obs, env.observation().reshape(3, -1).numpy())
    # a non-finite step: that episode terminates with the finite penalty and starts over
    u = np.zeros((3, 4), np.float32)
    u[1] = np.inf
    obs, reward, terminated, truncated, info = venv.step(u)
    assert terminated.tolist() == [False, True, False] and reward[1] == -100.0 and np.isfinite(obs).all()
    assert info["_final_obs"].tolist() == [False, True, False] and env.state.t.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="actions must have shape"):
        venv.step(np.zeros((3, 5), np.float32))


def test_stable_baselines3_ppo_trains_on_the_adapter():
    sb3 = pytest.importorskip("stable_baselines3")
    env = OptimizationEnv(li_malik_task("logistic"), batch_size=4, history=5, horizon=16)
    venv = OptimizationVectorEnv(env).to_sb3()
    model = sb3.PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=2, seed=0, device="cpu")
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=256)  # two rollouts of 32 steps x 4 objectives, 2 epochs each
    after = list(model.policy.parameters())
    assert model.num_timesteps == 256
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert all(bool(torch.isfinite(a).all()) for a in after)
    obs = venv.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (4, 4)
    obs, reward, done, infos = venv.step(action)
    assert obs.shape == (4, 60) and reward.dtype == np.float32 and len(infos) == 4


# ---- docstring examples -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "module",
    ["doubleopt.learned.policy", "doubleopt.learned.mdp", "doubleopt.problems.mixtures", "doubleopt.learned._tasks"],
)
def test_docstring_examples_run(module):
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_sb3_docstring_example_runs():
    pytest.importorskip("stable_baselines3")
    import doubleopt.learned._sb3 as mod

    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0
