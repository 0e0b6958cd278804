"""Guided policy search (``method="gps"``): the C-step's LQR and KL against direct computations, the S-step data,
training progress, non-finite samples, resume and errors."""

from __future__ import annotations

import math

import pytest
import torch

import doubleopt as do
from doubleopt._tree import tree_index
from doubleopt.learned.gps import (
    GPS,
    LinearGaussian,
    linearize_policy,
    lqr_backward,
    sample_policy,
    trajectory_kl,
)
from doubleopt.learned.meta import MetaConfig, MetaTrainer, meta_train
from doubleopt.problems import MixtureLogisticRegression


def _random_spd(gen, *shape, n, scale=1.0):
    A = torch.randn(*shape, n, n, generator=gen, dtype=torch.float64)
    return scale * (A @ A.transpose(-1, -2) / n + 0.5 * torch.eye(n, dtype=torch.float64))


def _lqr_problem(M=2, T=4, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    H = _random_spd(g, M, T + 1, n=n)
    h = torch.randn(M, T + 1, n, generator=g, dtype=torch.float64)
    pol_K = 0.3 * torch.randn(M, T, n, n, generator=g, dtype=torch.float64)
    pol_k = torch.randn(M, T, n, generator=g, dtype=torch.float64)
    pol_prec = _random_spd(g, M, T, n=n, scale=2.0)
    eta = torch.tensor([0.5, 3.0], dtype=torch.float64)[:M]
    return H, h, pol_K, pol_k, pol_prec, eta


def test_lqr_mean_trajectory_minimizes_the_deterministic_objective():
    """Certainty equivalence: from y0, the controller's mean trajectory minimizes
    sum_t [y_{t+1}' H y_{t+1} / 2 + h' y_{t+1}] / eta + (u_t - Kb y_t - kb)' P (u_t - Kb y_t - kb) / 2."""
    H, h, pol_K, pol_k, pol_prec, eta = _lqr_problem()
    M, T, n = pol_k.shape
    ctrl = lqr_backward(eta, H, h, pol_K, pol_k, pol_prec)
    y0 = torch.tensor([[1.0, -2.0], [0.5, 0.3]], dtype=torch.float64)

    def J(u):  # u: (M, T, n)
        y, total = y0, 0.0
        for t in range(T):
            r = u[:, t] - (pol_K[:, t] @ y[..., None])[..., 0] - pol_k[:, t]
            total = total + 0.5 * (r[:, None, :] @ pol_prec[:, t] @ r[..., None])[:, 0, 0]
            y = y + u[:, t]
            total = (
                total + (0.5 * (y[:, None, :] @ H[:, t + 1] @ y[..., None])[:, 0, 0] + (h[:, t + 1] * y).sum(-1)) / eta
            )
        return total.sum()

    u = torch.zeros(M, T, n, dtype=torch.float64, requires_grad=True)
    grad = torch.autograd.grad(J(u), u, create_graph=True)[0].reshape(-1)
    hess = torch.stack([torch.autograd.grad(grad[i], u, retain_graph=True)[0].reshape(-1) for i in range(grad.numel())])
    u_star = -torch.linalg.solve(hess, grad.detach()).reshape(M, T, n)  # J is quadratic: one Newton step from 0
    y, u_ctrl = y0, []
    for t in range(T):
        u_t = (ctrl.K[:, t] @ y[..., None])[..., 0] + ctrl.k[:, t]
        u_ctrl.append(u_t)
        y = y + u_t
    torch.testing.assert_close(torch.stack(u_ctrl, 1), u_star, rtol=1e-9, atol=1e-9)
    # the controller's covariance is the inverse of its precision, which the S-step uses as the KL weight
    torch.testing.assert_close(ctrl.chol @ ctrl.chol.transpose(-1, -2), ctrl.precision)


def test_trajectory_kl_matches_monte_carlo():
    H, h, pol_K, pol_k, pol_prec, eta = _lqr_problem(seed=1)
    M, T, n = pol_k.shape
    ctrl = lqr_backward(eta, H, h, pol_K, pol_k, pol_prec)
    mu0 = torch.tensor([[0.5, -0.5], [1.0, 0.0]], dtype=torch.float64)
    cov0 = torch.diag_embed(torch.tensor([[0.3, 0.2], [0.1, 0.4]], dtype=torch.float64))
    exact = trajectory_kl(ctrl, pol_K, pol_k, pol_prec, mu0, cov0)
    g = torch.Generator().manual_seed(2)
    S = 40000
    y = (
        mu0[:, None]
        + (torch.randn(M, S, n, generator=g, dtype=torch.float64)[..., None, :] @ cov0.sqrt()[:, None])[..., 0, :]
    )
    total = torch.zeros(M, dtype=torch.float64)
    for t in range(T):
        Sigma = torch.linalg.inv(ctrl.precision[:, t])
        pol_Sigma = torch.linalg.inv(pol_prec[:, t])
        mean_c = (ctrl.K[:, t, None] @ y[..., None])[..., 0] + ctrl.k[:, t, None]
        mean_p = (pol_K[:, t, None] @ y[..., None])[..., 0] + pol_k[:, t, None]
        pc = torch.distributions.MultivariateNormal(mean_c, Sigma[:, None].expand(M, S, n, n))
        pp = torch.distributions.MultivariateNormal(mean_p, pol_Sigma[:, None].expand(M, S, n, n))
        total += torch.distributions.kl_divergence(pc, pp).mean(1)
        y = (
            pc.sample()
            if False
            else mean_c
            + (
                torch.randn(M, S, n, generator=g, dtype=torch.float64)[..., None, :]
                @ torch.linalg.cholesky(Sigma)[:, None].transpose(-1, -2)
            )[..., 0, :]
            + y
        )
    torch.testing.assert_close(total, exact, rtol=0.03, atol=0.0)


def test_eta_bisection_meets_the_kl_bound():
    H, h, pol_K, pol_k, pol_prec, _ = _lqr_problem(seed=3)
    M, T, n = pol_k.shape
    mu0 = torch.zeros(M, n, dtype=torch.float64)
    cov0 = torch.eye(n, dtype=torch.float64).expand(M, n, n)
    gps = GPS(kl_step=0.05, bisections=30)
    ctrl, kl = gps.solve_eta(100.0 * H, 100.0 * h, pol_K, pol_k, pol_prec, mu0, cov0)
    assert torch.all(kl <= 0.05 * T * n * (1 + 1e-9))  # the bound is per step and coordinate
    assert torch.all(kl >= 0.05 * T * n * 0.99)  # a strong cost: the bound binds
    loose = GPS(kl_step=1e6)
    _, kl = loose.solve_eta(H, h, pol_K, pol_k, pol_prec, mu0, cov0)
    assert torch.all(kl < 1e6 * T * n)  # inactive bound: the smallest eta of the bracket


def test_linearize_policy_recovers_a_linear_policy():
    g = torch.Generator().manual_seed(0)
    M, N, T, n = 3, 12, 5, 3
    y = torch.randn(M, N, T, n, generator=g, dtype=torch.float64)
    K = torch.randn(M, T, n, n, generator=g, dtype=torch.float64)
    k = torch.randn(M, T, n, generator=g, dtype=torch.float64)
    mean = (K[:, None] @ y[..., None])[..., 0] + k[:, None]
    K_fit, k_fit = linearize_policy(y, mean, ridge=0.0)
    torch.testing.assert_close(K_fit, K, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_fit, k, rtol=1e-6, atol=1e-6)
    K_shrunk, _ = linearize_policy(y, mean, ridge=1e6)  # a huge ridge: no state dependence left
    assert K_shrunk.abs().max() < 1e-3


def test_features_rebuilt_from_stored_runs_equal_the_rollout_features():
    torch.manual_seed(0)
    policy = do.learned.PolicyOptimizer(history=4)
    task = do.learned.li_malik_task("robust", n_train=3)
    s = sample_policy(
        policy,
        task,
        torch.arange(3).repeat_interleave(2),
        9,
        torch.Generator().manual_seed(0),
        torch.Generator().manual_seed(1),
    )
    feats = policy.features
    hist = feats.init(s.values[:, 0], s.grads[:, 0])
    R = s.y.shape[0]
    for t in range(9):
        rebuilt = feats.at(s.values, s.grads, s.y, torch.arange(R), torch.full((R,), t))
        torch.testing.assert_close(feats(rebuilt), feats(hist), rtol=1e-5, atol=1e-6)
        hist = feats.push(hist, s.values[:, t + 1], s.grads[:, t + 1], s.y[:, t + 1] - s.y[:, t])
    # the recorded mean steps are the policy's, at the recorded states
    x = tree_index(task.contexts, s.objective)
    assert x is not None and torch.isfinite(s.mean_step).all() and bool(s.finite.all())


def _trainer(tmp_task=None, **options):
    torch.manual_seed(0)
    task = tmp_task or do.learned.li_malik_task("logistic", n_train=8)
    opts = {"samples": 4, "inner_steps": 10, "minibatch": 256, **options}
    cfg = MetaConfig(method="gps", unroll=20, horizon=20, meta_lr=1e-2, options=opts)
    return MetaTrainer(do.learned.PolicyOptimizer(history=5, step_scale=0.3, learn_std=False), task, cfg)


def test_gps_lowers_the_sampled_cost_on_logistic_regression():
    tr = _trainer()
    tr.step()
    first = float(tr.state.sample_cost)
    for _ in range(59):
        info = tr.step()
        assert not info.skipped
    assert int(tr.state.iteration) == 6
    assert float(tr.state.sample_cost) < 0.5 * first
    assert 0 < float(tr.state.kl) <= 0.25 * (1 + 1e-9)  # the default kl_step bounds the mean KL per step and coordinate


class _Exploding(MixtureLogisticRegression):
    """Logistic regression whose objective is infinite beyond |y_0| > 1.5 (reached by some runs)."""

    def value_and_grad(self, y, x):
        f, g = super().value_and_grad(y, x)
        return torch.where(y[:, 0].abs() > 1.5, torch.full_like(f, math.inf), f), g


def test_nonfinite_samples_are_dropped_and_counted():
    base = do.learned.li_malik_task("logistic", n_train=8)
    task = do.learned.ObjectiveSetTask(_Exploding(), base.contexts, name="exploding")
    tr = _trainer(task)
    for _ in range(20):
        info = tr.step()
        assert not info.skipped and math.isfinite(info.loss)
    assert int(tr.state.nonfinite) > 0
    assert torch.isfinite(tr.state.values).all() and torch.isfinite(tr.state.target).all()
    assert all(torch.isfinite(p).all() for p in tr.lopt.parameters())


def test_resume_equals_the_uninterrupted_run(tmp_path):
    full = _trainer()
    meta_train(full, 25, progress=False)
    ckpt = tmp_path / "ckpt.safetensors"
    first = _trainer()
    meta_train(first, 15, checkpoint=ckpt, checkpoint_every=5, progress=False)
    resumed = _trainer()
    meta_train(resumed, 25, checkpoint=ckpt, resume=True, progress=False)
    for a, b in zip(full.lopt.state_dict().values(), resumed.lopt.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(full.state.target, resumed.state.target)


def test_gps_refuses_what_it_cannot_train():
    task = do.learned.li_malik_task("logistic", n_train=4)
    with pytest.raises(TypeError, match="PolicyOptimizer"):
        MetaTrainer(do.learned.LSTMOptimizer(), task, MetaConfig(method="gps"))
    with pytest.raises(TypeError, match="ObjectiveSetTask"):
        MetaTrainer(do.learned.PolicyOptimizer(), do.learned.QuadraticTask(), MetaConfig(method="gps"))
    with pytest.raises(ValueError, match="samples"):
        MetaConfig(method="gps", options={"samples": 1})
    with pytest.raises(ValueError, match="kl_step"):
        MetaConfig(method="gps", options={"kl_step": -1.0})
    with pytest.raises(ValueError, match="unknown option"):
        MetaConfig(method="gps", options={"kl": 1.0})


def test_controllers_are_a_linear_gaussian_per_objective():
    H, h, pol_K, pol_k, pol_prec, eta = _lqr_problem()
    ctrl = lqr_backward(eta, H, h, pol_K, pol_k, pol_prec)
    assert isinstance(ctrl, LinearGaussian)
    M, T, n = pol_k.shape
    assert ctrl.K.shape == (M, T, n, n) and ctrl.k.shape == (M, T, n)
    # eta -> infinity: the controller becomes the linearized policy
    far = lqr_backward(torch.full((M,), 1e12, dtype=torch.float64), H, h, pol_K, pol_k, pol_prec)
    torch.testing.assert_close(far.K, pol_K, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(far.k, pol_k, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(far.precision, pol_prec, rtol=1e-6, atol=1e-6)
