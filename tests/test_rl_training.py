"""doubleopt.rl training runs: agent k of a batched run equals the seed trained alone, resume equals the
uninterrupted run, checkpoints of another algorithm or shape are refused, non-finite agents stop alone,
the command line trains, resumes and plots."""

import json

import pytest
import torch

import doubleopt.rl as rl
from doubleopt.cli import main


def _config(**kw):
    base = dict(total_steps=300, learning_starts=60, batch_size=16, eval_every=0, eval_episodes=2, dtype="float64")
    base.update(kw)
    return rl.TrainConfig(**base)


def _algo(cls, hidden=(16, 16)):
    delay = 2 if cls is rl.TD3 else 1
    return cls(actor=rl.ActorUpdate(hidden=hidden, delay=delay), critic=rl.CriticUpdate(hidden=hidden), gamma=0.95)


@pytest.mark.parametrize("cls", [rl.TD3, rl.SAC, rl.DDPG])
def test_agent_of_batched_run_equals_seed_trained_alone(cls):
    algo, cfg = _algo(cls), _config()
    batched = rl.ActorCriticTrainer(algo, [3, 7, 11], cfg)
    batched.run(progress=False)
    alone = rl.ActorCriticTrainer(algo, [7], cfg)
    alone.run(progress=False)
    k = 1
    for name, net in (("actor", "actor"), ("critic", "critic"), ("critic target", "critic_target")):
        mine, ref = getattr(batched.nets, net).flat, getattr(alone.nets, net).flat
        rows = ref.shape[0]
        torch.testing.assert_close(mine[k * rows : (k + 1) * rows], ref, rtol=1e-6, atol=1e-6, msg=name)
    if cls is rl.SAC:
        torch.testing.assert_close(batched.nets.log_alpha[k : k + 1], alone.nets.log_alpha, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(batched.result().final_eval[k], alone.result().final_eval[0], rtol=1e-6, atol=1e-6)
    assert batched.curves.episode_returns[0][k] == pytest.approx(alone.curves.episode_returns[0][0], abs=1e-6)


@pytest.mark.parametrize("cls", [rl.TD3, rl.SAC])
def test_resume_equals_uninterrupted(tmp_path, cls):
    algo, cfg = _algo(cls), _config(total_steps=240, eval_every=120)
    full = rl.ActorCriticTrainer(algo, [0, 1], cfg)
    full.run(progress=False)
    ckpt = tmp_path / "ckpt.safetensors"
    stopped = rl.ActorCriticTrainer(algo, [0, 1], cfg)

    class Stop(Exception):
        pass

    def interrupt(tr):
        if tr.step_count == 170:
            raise Stop  # a crash after the checkpoint at step 100 (checkpoint_every=100)

    with pytest.raises(Stop):
        stopped.run(progress=False, checkpoint=ckpt, checkpoint_every=100, callback=interrupt)
    resumed = rl.ActorCriticTrainer(algo, [0, 1], cfg)
    resumed.run(progress=False, checkpoint=ckpt, checkpoint_every=100, resume=True)
    for name in ("actor", "critic", "actor_target", "critic_target"):
        assert torch.equal(getattr(resumed.nets, name).flat, getattr(full.nets, name).flat), name
    assert resumed.curves.eval_returns == full.curves.eval_returns
    assert resumed.curves.episode_returns == full.curves.episode_returns
    assert resumed.curves.bellman_error == full.curves.bellman_error


def test_checkpoint_of_another_algorithm_or_shape_is_refused(tmp_path):
    cfg = _config(total_steps=80)
    ckpt = tmp_path / "td3.safetensors"
    rl.ActorCriticTrainer(_algo(rl.TD3), [0], cfg).run(progress=False, checkpoint=ckpt)
    with pytest.raises(ValueError, match="algorithm 'td3'.*'sac'"):
        rl.load_checkpoint(rl.ActorCriticTrainer(_algo(rl.SAC), [0], cfg), ckpt)
    with pytest.raises(ValueError, match="'nets.actor.flat' has shape"):
        rl.load_checkpoint(rl.ActorCriticTrainer(_algo(rl.TD3, hidden=(8, 8)), [0], cfg), ckpt)
    with pytest.raises(ValueError, match="seeds"):
        rl.load_checkpoint(rl.ActorCriticTrainer(_algo(rl.TD3), [0, 1], cfg), ckpt)
    with pytest.raises(ValueError, match="training configuration .*batch_size"):
        rl.load_checkpoint(rl.ActorCriticTrainer(_algo(rl.TD3), [0], _config(total_steps=80, batch_size=8)), ckpt)


def test_non_finite_agent_stops_alone():
    algo, cfg = _algo(rl.TD3), _config(total_steps=150)
    tr = rl.ActorCriticTrainer(algo, [0, 1, 2], cfg)
    ref = rl.ActorCriticTrainer(algo, [0, 1, 2], cfg)
    for _ in range(80):
        tr.step()
        ref.step()
    rows = tr.nets.critic.flat.shape[0] // 3
    with torch.no_grad():
        tr.nets.critic.flat[rows : 2 * rows] = float("nan")  # agent 1's critic breaks
    with pytest.warns(RuntimeWarning, match=r"agent 1 \(seed 1\) stopped .* non-finite critic loss"):
        result = tr.run(progress=False)
    ref_result = ref.run(progress=False)
    assert result.status[0] == "ok" and result.status[2] == "ok"
    assert result.status[1].startswith("stopped at step") and "critic loss" in result.status[1]
    assert tr.alive.tolist() == [True, False, True]
    for k in (0, 2):  # the other agents are unaffected
        torch.testing.assert_close(tr.nets.actor.flat[k], ref.nets.actor.flat[k])
        assert result.final_eval[k] == pytest.approx(ref_result.final_eval[k])
    assert torch.isfinite(tr.nets.actor.flat[0]).all()


def test_exploration_actions_stay_in_bounds_and_user_actions_are_counted():
    tr = rl.ActorCriticTrainer(_algo(rl.TD3), [0], _config(total_steps=100))
    tr.run(progress=False)
    assert tr.env.clipped_actions.tolist() == [0]  # the learner's actions are in [-1, 1] x max torque
    env = rl.BatchedPendulum(2, 1)
    env.reset(rl.agent_generators([0, 1]))
    env.step(torch.tensor([[[5.0]], [[1.0]]]))
    assert env.clipped_actions.tolist() == [1, 0]


def test_cli_trains_resumes_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["rl-train", "--algo", "sac", "--seeds", "0", "1", "--steps", "120", "--learning-starts", "40",
            "--batch-size", "8", "--hidden", "8", "--eval-every", "60", "--eval-episodes", "1", "--out", str(out),
            "--checkpoint-every", "60", "--no-progress"]
    assert main(args) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["algorithm"] == "sac" and record["seeds"] == [0, 1]
    assert record["curves"]["eval_steps"] == [60, 120] and len(record["final_eval_return"]) == 2
    assert (out / "curve.png").stat().st_size > 1000 and (out / "checkpoint.safetensors").exists()
    assert "final eval return" in capsys.readouterr().out
    # resuming a finished run changes nothing
    assert main(args + ["--resume"]) == 0
    assert json.loads((out / "record.json").read_text())["final_eval_return"] == record["final_eval_return"]


def test_presets():
    algo, cfg = rl.preset("zoo", "td3")
    assert algo.actor.hidden == (400, 300) and cfg.batch_size == 256 and cfg.learning_starts == 10_000
    algo, cfg = rl.preset("fast", "sac")
    assert isinstance(algo, rl.SAC)
    with pytest.raises(ValueError, match="unknown preset"):
        rl.preset("slow", "td3")
    with pytest.raises(ValueError, match="unknown algorithm"):
        rl.preset("fast", "ppo")
