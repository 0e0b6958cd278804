"""doubleopt.rl building blocks: the batched pendulum against gymnasium, stacked networks and Adam against
torch, the algorithms' targets, losses, policy delay and target updates against direct computations."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import doubleopt.rl as rl
from doubleopt.rl.algorithms import randn_per_agent


# ---- the environment -----------------------------------------------------------------------------------
def test_batched_pendulum_matches_gymnasium_step_by_step():
    k, e, steps = 2, 3, 200
    envs = [gym.make("Pendulum-v1") for _ in range(k * e)]
    obs_ref = np.stack([env.reset(seed=100 + i)[0] for i, env in enumerate(envs)])
    th, thd = rl.pendulum.gym_pendulum_states(envs)
    ours = rl.BatchedPendulum(k, e, dtype=torch.float64)
    obs = ours.set_state(th.view(k, e), thd.view(k, e))
    np.testing.assert_allclose(obs.reshape(k * e, 3).numpy(), obs_ref, atol=1e-6)
    rng = np.random.default_rng(0)
    outside = 0
    free = rl.BatchedPendulum(k, e, dtype=torch.float64)  # never re-synchronised: the whole trajectory
    free.set_state(th.view(k, e), thd.view(k, e))
    for _ in range(steps):
        a = rng.uniform(-3, 3, size=(k * e, 1))  # some actions outside [-2, 2]: clipped by both
        outside += int((np.abs(a) > 2).sum())
        # step by step: each transition from gymnasium's exact state (float64), as the check asks
        th, thd = rl.pendulum.gym_pendulum_states(envs)
        ours.theta, ours.theta_dot = th.view(k, e).clone(), thd.view(k, e).clone()
        ref = [env.step(a[i].astype(np.float32)) for i, env in enumerate(envs)]
        traj = free.step(torch.as_tensor(a.astype(np.float32), dtype=torch.float64).view(k, e, 1))
        # gymnasium computes the torque terms in float32 (NumPy 2 promotion): the free trajectory drifts slowly
        np.testing.assert_allclose(traj.next_obs.reshape(k * e, 3).numpy(), np.stack([r[0] for r in ref]), atol=1e-3)
        out = ours.step(torch.as_tensor(a.astype(np.float32), dtype=torch.float64).view(k, e, 1))
        np.testing.assert_allclose(out.next_obs.reshape(k * e, 3).numpy(), np.stack([r[0] for r in ref]), atol=1e-6)
        np.testing.assert_allclose(out.reward.reshape(-1).numpy(), [r[1] for r in ref], atol=1e-6)
        assert out.truncated.reshape(-1).tolist() == [r[3] for r in ref]
        assert not out.terminated.any()
    assert out.truncated.all()
    assert int(ours.clipped_actions.sum()) == outside


def test_pendulum_resets_per_agent_and_rejects_bad_actions():
    env = rl.BatchedPendulum(2, 4)
    obs = env.reset(rl.agent_generators([0, 1]))
    assert obs.shape == (2, 4, 3)
    assert (env.theta.abs() <= math.pi).all() and (env.theta_dot.abs() <= 1).all()
    alone = rl.BatchedPendulum(1, 4)
    alone.reset(rl.agent_generators([1]))
    torch.testing.assert_close(alone.theta[0], env.theta[1])  # agent 1's stream does not depend on agent 0
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="one generator per agent"):
        env.reset(rl.agent_generators([0]))


# ---- stacked networks and Adam ----------------------------------------------------------------------------
def test_stacked_mlp_equals_separate_linear_layers():
    gens = rl.agent_generators([3, 4])
    net = rl.StackedMLP(4, [5, 7, 2], gens, dtype=torch.float64)  # 2 agents x 2 twins
    x = torch.randn(4, 6, 5, dtype=torch.float64)
    out = net(x)
    for m in range(4):
        w0, b0 = net.layer(0)
        w1, b1 = net.layer(1)
        ref = torch.relu(x[m] @ w0[m] + b0[m]) @ w1[m] + b1[m]
        torch.testing.assert_close(out[m], ref)
    torch.testing.assert_close(net(x[0::2], slice(0, None, 2)), out[0::2])
    # nn.Linear's init bounds, member by member from the agent's generator
    w0, _ = net.layer(0)
    assert w0.abs().max() <= 1 / math.sqrt(5)
    single = rl.StackedMLP(2, [5, 7, 2], rl.agent_generators([4]), dtype=torch.float64)
    torch.testing.assert_close(single.flat, net.flat[2:4])


def test_stacked_adam_equals_torch_adam_per_agent_with_masks():
    torch.manual_seed(0)
    k, reps = 3, 2
    p0 = torch.randn(k * reps, 10, dtype=torch.float64)
    lrs = torch.tensor([1e-3, 3e-2, 1e-1], dtype=torch.float64)
    p = p0.clone()
    opt = rl.StackedAdam([p], lrs, k)
    refs = [torch.nn.Parameter(p0[i * reps : (i + 1) * reps].clone()) for i in range(k)]
    ref_opts = [torch.optim.Adam([r], lr=float(lrs[i])) for i, r in enumerate(refs)]
    masks = [None, torch.tensor([True, False, True]), torch.tensor([False, True, True]), None]
    for it in range(12):
        grads = torch.randn(k * reps, 10, dtype=torch.float64)
        mask = masks[it % len(masks)]
        opt.step([grads], mask)
        for i in range(k):
            if mask is None or mask[i]:
                refs[i].grad = grads[i * reps : (i + 1) * reps].clone()
                ref_opts[i].step()
    for i in range(k):
        torch.testing.assert_close(p[i * reps : (i + 1) * reps], refs[i].detach(), rtol=1e-10, atol=1e-12)


def test_soft_update_masked():
    src = rl.StackedMLP(2, [2, 3, 1], rl.agent_generators([0, 1]))
    tgt = rl.StackedMLP(2, [2, 3, 1], rl.agent_generators([5, 6]))
    before = tgt.flat.detach().clone()
    rl.soft_update(tgt, src, 0.1, torch.tensor([True, False]), agents=2)
    torch.testing.assert_close(tgt.flat[0], 0.9 * before[0] + 0.1 * src.flat[0].detach())
    torch.testing.assert_close(tgt.flat[1], before[1])


# ---- the algorithms against direct computations --------------------------------------------------------------
def _tiny(algo_cls, **kw):
    return algo_cls(actor=rl.ActorUpdate(hidden=(8,), **kw), critic=rl.CriticUpdate(hidden=(8,)), gamma=0.9)


def _trainer(algo, seeds=(0, 1), **cfg):
    base = dict(total_steps=200, learning_starts=30, batch_size=16, eval_every=0, eval_episodes=1, dtype="float64")
    base.update(cfg)
    return rl.ActorCriticTrainer(algo, list(seeds), rl.TrainConfig(**base))


def _manual_q(net, member, obs, act):
    x = torch.cat([obs, act], -1)
    w0, b0 = net.layer(0)
    w1, b1 = net.layer(1)
    return (torch.relu(x @ w0[member] + b0[member]) @ w1[member] + b1[member]).squeeze(-1)


def test_td3_target_and_loss_against_direct_computation():
    algo = _tiny(rl.TD3, delay=2)
    tr = _trainer(algo)
    for _ in range(40):
        tr.step()
    batch = tr.buffer.sample(16, rl.agent_generators([7, 8]))
    gens_a, gens_b = rl.agent_generators([9, 10]), rl.agent_generators([9, 10])
    y = algo.critic_target(tr.nets, batch, gens_a)
    noise = (randn_per_agent(gens_b, (16, 1), torch.float64) * 0.2).clamp(-0.5, 0.5)
    for k in range(2):
        w0, b0 = tr.nets.actor_target.layer(0)
        w1, b1 = tr.nets.actor_target.layer(1)
        a = torch.tanh(torch.relu(batch.next_obs[k] @ w0[k] + b0[k]) @ w1[k] + b1[k])
        a = (a + noise[k]).clamp(-1, 1)
        q = torch.minimum(*(_manual_q(tr.nets.critic_target, 2 * k + j, batch.next_obs[k], a) for j in range(2)))
        torch.testing.assert_close(y[k], batch.reward[k] + 0.9 * (1 - batch.done[k]) * q)
    loss = algo.critic_loss(tr.nets, batch, y)
    for k in range(2):
        ref = sum(((_manual_q(tr.nets.critic, 2 * k + j, batch.obs[k], batch.action[k]) - y[k]) ** 2).mean()
                  for j in range(2))
        torch.testing.assert_close(loss[k], ref)


def test_policy_delay_and_target_updates():
    algo = _tiny(rl.TD3, delay=3)
    tr = _trainer(algo, learning_starts=20)
    for _ in range(20):
        tr.step()
    for i in range(1, 10):
        actor0 = tr.nets.actor.flat.detach().clone()
        ct0, at0 = tr.nets.critic_target.flat.detach().clone(), tr.nets.actor_target.flat.detach().clone()
        tr.step()  # one critic update per step
        assert int(tr.critic_updates[0]) == i
        if i % 3 == 0:
            assert not torch.equal(tr.nets.actor.flat, actor0)
            torch.testing.assert_close(tr.nets.critic_target.flat, torch.lerp(ct0, tr.nets.critic.flat.detach(), 0.005))
            torch.testing.assert_close(tr.nets.actor_target.flat, torch.lerp(at0, tr.nets.actor.flat.detach(), 0.005))
        else:
            assert torch.equal(tr.nets.actor.flat, actor0)
            assert torch.equal(tr.nets.critic_target.flat, ct0) and torch.equal(tr.nets.actor_target.flat, at0)


def test_per_agent_delays_in_one_run():
    algo = _tiny(rl.TD3, delay=1)
    tr = _trainer(algo, seeds=(0, 1), learning_starts=20)
    tr2 = rl.ActorCriticTrainer(algo, [0, 1], tr.config, sweep=[{"delay": 1}, {"delay": 4}])
    for _ in range(24):
        tr2.step()
    assert tr2.actor_opt.step_count.tolist() == [4.0, 1.0]
    with pytest.raises(ValueError, match="unknown key"):
        rl.ActorCriticTrainer(algo, [0], tr.config, sweep=[{"tau": 0.1}])
    with pytest.raises(ValueError, match="2 entries for 1 agents"):
        rl.ActorCriticTrainer(algo, [0], tr.config, sweep=[{}, {}])
    with pytest.raises(ValueError, match="delay must be an integer"):
        rl.ActorCriticTrainer(algo, [0], tr.config, sweep=[{"delay": 0}])


def test_sac_log_prob_matches_torch_distributions():
    algo = _tiny(rl.SAC)
    tr = _trainer(algo)
    obs = torch.randn(2, 5, 3, dtype=torch.float64)
    a, logp = algo._sample(tr.nets, tr.nets.actor, obs, rl.agent_generators([1, 2]))
    mean, log_std = tr.nets.actor(obs).chunk(2, -1)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.clamp(-20, 2).exp()), [torch.distributions.TanhTransform()]
    )
    torch.testing.assert_close(logp, dist.log_prob(a).sum(-1), rtol=1e-6, atol=1e-6)
    assert (a.abs() < 1).all()
    greedy = algo.act(tr.nets, obs, None)
    torch.testing.assert_close(greedy, torch.tanh(mean))


def test_algorithm_validation():
    with pytest.raises(ValueError, match="gamma"):
        rl.TD3(gamma=1.5)
    with pytest.raises(ValueError, match="delay"):
        rl.TD3(actor=rl.ActorUpdate(delay=0))
    with pytest.raises(ValueError, match="step size"):
        rl.SAC(critic=rl.CriticUpdate(lr=float("nan")))
    with pytest.raises(ValueError, match="total_steps"):
        rl.TrainConfig(total_steps=0)
    with pytest.raises(ValueError, match="unknown environment"):
        rl.TrainConfig(env="HalfCheetah-v4")
    assert rl.DDPG().critic.twin is False and rl.DDPG().actor.delay == 1
