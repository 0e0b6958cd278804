"""``doubleopt rl-train``: train K actor-critic agents at once, with a progress bar and resumable checkpoints.

Example::

    doubleopt rl-train --algo td3 --seeds 0 1 2 3 4 --out runs/td3
    doubleopt rl-train --algo td3 --seeds 0 1 2 3 4 --out runs/td3 --resume

Writes ``OUT/checkpoint.safetensors`` (the whole state: networks, optimizers, replay buffer, environments,
generators), ``OUT/record.json`` (configuration, returns, wall time) and ``OUT/curve.png`` (learning curves).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from ..cli import nonnegative_int, positive_float, positive_int, unit_interval


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rl-train",
        help="train actor-critic agents (DDPG, TD3, SAC) on Pendulum-v1, many seeds at once",
        description="Train K agents (one per seed) as one batched computation; evaluate on gymnasium's "
        "Pendulum-v1 (mean return of deterministic episodes).",
    )
    p.add_argument("--algo", choices=["ddpg", "td3", "sac"], default="td3", help="algorithm")
    p.add_argument("--preset", choices=["fast", "zoo"], default="fast",
                   help="fast: our default (64x64 networks, batch 128, 1k random steps); zoo: RL Zoo's settings")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="one agent per seed")
    p.add_argument(
        "--steps", type=positive_int, default=None, help="environment steps per agent (default: the preset's)"
    )
    p.add_argument("--learning-starts", type=nonnegative_int, default=None, help="random-action steps before learning")
    p.add_argument("--batch-size", type=positive_int, default=None, help="transitions per agent per update")
    p.add_argument("--updates-per-step", type=positive_int, default=None, help="critic updates per environment step")
    p.add_argument("--hidden", type=positive_int, nargs="+", default=None, help="hidden widths of actor and critic")
    p.add_argument("--critic-lr", type=positive_float, default=None, help="critic step size")
    p.add_argument("--actor-lr", type=positive_float, default=None, help="actor step size")
    p.add_argument("--delay", type=positive_int, default=None, help="critic updates per actor update")
    p.add_argument("--gamma", type=unit_interval, default=None, help="discount")
    p.add_argument("--eval-every", type=nonnegative_int, default=None, help="steps between gymnasium evaluations")
    p.add_argument("--eval-episodes", type=positive_int, default=None, help="episodes per evaluation")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None, help="network dtype")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (fixed for reproducibility)")
    p.add_argument("--out", default="runs/rl", help="output folder")
    p.add_argument("--checkpoint-every", type=positive_int, default=5000, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors if present")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def build(args: argparse.Namespace):
    from .presets import preset, with_overrides
    from .train import ActorCriticTrainer

    algo, cfg = preset(args.preset, args.algo)
    algo, cfg = with_overrides(
        algo, cfg, hidden=args.hidden, critic_lr=args.critic_lr, actor_lr=args.actor_lr, delay=args.delay,
        gamma=args.gamma, total_steps=args.steps, learning_starts=args.learning_starts, batch_size=args.batch_size,
        updates_per_step=args.updates_per_step, eval_every=args.eval_every, eval_episodes=args.eval_episodes,
        dtype=args.dtype,
    )
    return ActorCriticTrainer(algo, args.seeds, cfg)


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    trainer = build(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = trainer.run(
        progress=not args.no_progress,
        checkpoint=out / "checkpoint.safetensors",
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
    )
    record = {
        "command": "doubleopt " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:])),
        "algorithm": trainer.algorithm.name,
        "algorithm_config": json.loads(trainer.metadata()["algorithm_config"]),
        "train_config": asdict(trainer.config),
        "seeds": result.seeds,
        "final_eval_return": result.final_eval,
        "mean_final_eval_return": sum(result.final_eval) / len(result.final_eval),
        "status": result.status,
        "clipped_actions": result.clipped_actions,
        "train_seconds": result.train_seconds,
        "threads": args.threads,
        "torch": torch.__version__,
        "curves": asdict(result.curves),
    }
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    plot_curves(result, out / "curve.png", title=f"{trainer.algorithm.name.upper()} on Pendulum-v1")
    returns = ", ".join(f"{r:.0f}" for r in result.final_eval)
    print(f"{trainer.algorithm.name} x{len(result.seeds)}: final eval return {record['mean_final_eval_return']:.1f} "
          f"(per seed: {returns}); training {result.train_seconds:.0f} s; wrote {out}/record.json, curve.png")
    for seed, status in zip(result.seeds, result.status):
        if status != "ok":
            print(f"  seed {seed}: {status}")
    return 0


def plot_curves(result, path: Path, title: str = "") -> None:
    """Evaluation return per agent (and their mean) and the critic's Bellman error against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result.curves
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    if c.eval_steps:
        for i, seed in enumerate(result.seeds):
            ax1.plot(c.eval_steps, [r[i] for r in c.eval_returns], alpha=0.4, lw=1, label=f"seed {seed}")
        ax1.plot(c.eval_steps, [sum(r) / len(r) for r in c.eval_returns], color="k", lw=2, label="mean")
    ax1.set(xlabel="environment steps", ylabel="eval return (gymnasium)", title=title)
    ax1.legend(fontsize=7)
    if c.bellman_steps:
        for i in range(len(result.seeds)):
            ax2.semilogy(c.bellman_steps, [max(b[i], 1e-12) for b in c.bellman_error], alpha=0.6, lw=1)
    ax2.set(xlabel="environment steps", ylabel="critic Bellman error", title="inner problem: critic regression")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
