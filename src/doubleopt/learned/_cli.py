"""``doubleopt train-lopt``: meta-train a learned optimizer with a progress bar and resumable checkpoints.

Example::

    doubleopt train-lopt --arch lstm --task digits --meta-steps 400 --out runs/lstm-digits --seed 0
    doubleopt train-lopt --arch lstm --task digits --meta-steps 400 --out runs/lstm-digits --seed 0 --resume
    doubleopt train-lopt --arch policy --task li-malik-logistic --method ppo --option epochs=4 --meta-steps 400
    torchrun --standalone --nproc-per-node 2 -m doubleopt train-lopt --task digits --out runs/lstm-digits-2p

Under ``torchrun`` the command runs data-parallel (:mod:`doubleopt.distributed`): TBPTT splits the batch into
``--shards`` random streams (default: one per process), ES / PES split the antithetic pairs; rank 0 writes the
checkpoints, the weights, the record and the progress bar.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..cli import nonnegative_float, nonnegative_int, positive_float, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-lopt",
        help="meta-train a learned optimizer (LSTM, MLP or the Li & Malik policy)",
        description="Meta-train a learned optimizer; writes OUT/checkpoint.safetensors "
        "periodically and OUT/<arch>-<task>.safetensors + OUT/record.json at the end.",
    )
    import doubleopt.learned  # noqa: F401  (imports the modules that register every estimator)

    from ._tasks import TASK_NAMES
    from .estimators import ESTIMATORS

    p.add_argument(
        "--arch",
        choices=["lstm", "mlp", "policy"],
        default="lstm",
        help="optimizer architecture (policy: the Li & Malik Gaussian policy, for --method ppo or gps)",
    )
    p.add_argument(
        "--task",
        choices=list(TASK_NAMES),
        default="digits",
        help="optimizee task (li-malik-*: the training objectives of one of Li & Malik's families)",
    )
    p.add_argument("--method", choices=sorted(ESTIMATORS), default="tbptt", help="meta-gradient estimator")
    p.add_argument(
        "--option",
        action="append",
        type=parse_option,
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the estimator's own (MetaConfig.options; VALUE an int, float or true/false), "
        "repeatable: --option epochs=4 --option gae_lambda=0.95",
    )
    p.add_argument("--meta-steps", type=positive_int, default=400, help="number of meta-steps (truncations)")
    p.add_argument("--unroll", type=positive_int, default=20, help="truncation length K")
    p.add_argument("--horizon", type=positive_int, default=100, help="optimizee steps per trajectory T")
    p.add_argument("--batch", type=positive_int, default=16, help="optimizees per trajectory")
    p.add_argument("--meta-lr", type=positive_float, default=3e-3, help="Adam learning rate of the meta-optimizer")
    p.add_argument("--clip", type=nonnegative_float, default=1.0, help="meta-gradient norm clip (0 = none)")
    p.add_argument("--es-pairs", type=positive_int, default=8, help="ES/PES antithetic pairs")
    p.add_argument("--es-sigma", type=positive_float, default=0.01, help="ES/PES perturbation scale")
    p.add_argument("--second-order", action="store_true", help="TBPTT through the optimizee's gradients too")
    p.add_argument(
        "--hidden", type=positive_int, default=None, help="optimizer hidden size (default 20 LSTM, 32 MLP, 50 policy)"
    )
    p.add_argument(
        "--step-scale",
        type=positive_float,
        default=0.1,
        help="policy: the step unit alpha relative to the running gradient scale (step = alpha * s_g * u)",
    )
    p.add_argument(
        "--fixed-std",
        action="store_true",
        help="policy: keep the Gaussian's standard deviation fixed (exploration does not collapse during training)",
    )
    p.add_argument(
        "--weight-halflife",
        type=nonnegative_float,
        default=0.0,
        help="meta-objective weights w_t = 2^(-(t-1)/H), normalized to mean 1 over the horizon: "
        "emphasize the early steps (0 = uniform, the paper's)",
    )
    p.add_argument(
        "--log-loss",
        action="store_true",
        help="meta-objective on log f(theta_t) instead of f (every phase of the run counts, not just the start)",
    )
    p.add_argument(
        "--meta-lr-decay",
        type=nonnegative_int,
        default=0,
        help="cosine decay of the meta learning rate to 0 over this many meta-steps (0 = constant)",
    )
    p.add_argument(
        "--stagger",
        type=positive_int,
        default=1,
        help="TBPTT: split the batch into this many groups of optimizees whose trajectories start horizon/stagger "
        "steps apart, so every meta-gradient mixes all phases of training instead of cycling through them "
        "(1 = all optimizees in lockstep, the paper's)",
    )
    p.add_argument(
        "--rows",
        type=nonnegative_int,
        default=0,
        help="digits task: each optimizee trains on its own random subset of this many rows of the training "
        "split, a data-size variation that reaches the low-loss phase within the horizon (0 = the whole split)",
    )
    p.add_argument(
        "--init-weights",
        default=None,
        metavar="PATH",
        help="start from the optimizer weights in PATH (a .safetensors file written by train-lopt, e.g. an earlier "
        "stage with another meta-objective) instead of a random initialization; the meta-optimizer starts fresh",
    )
    p.add_argument(
        "--shards",
        type=positive_int,
        default=None,
        help="TBPTT: draw the batch as this many random streams, which torchrun processes split (default: one per "
        "process; 1 process with --shards N gives the weights of N processes)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of tasks, minibatches and ES noise")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (fixed for reproducibility)")
    p.add_argument("--out", default="runs/lopt", help="output folder")
    p.add_argument("--checkpoint-every", type=positive_int, default=25, help="meta-steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors if present")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def parse_option(text: str) -> tuple[str, int | float | bool]:
    """``"NAME=VALUE"`` -> ``(NAME, VALUE)`` with VALUE an int, a float or a bool (``true`` / ``false``).

    Example:
        >>> parse_option("epochs=4"), parse_option("gae_lambda=0.95"), parse_option("normalize_advantages=false")
        (('epochs', 4), ('gae_lambda', 0.95), ('normalize_advantages', False))
    """
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. epochs=4), got {text!r}")
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"the value of {name} must be an int, a float or true/false, got {value!r}")


def build(args: argparse.Namespace, comm=None):
    """The :class:`~doubleopt.learned.meta.MetaTrainer` of ``args`` (on the processes of ``comm``, default one)."""
    from ..distributed import Comm
    from ._lstm import LSTMOptimizer
    from ._mlp import MLPOptimizer
    from ._tasks import make_task
    from .meta import MetaConfig, MetaTrainer
    from .policy import PolicyOptimizer

    torch_seed(args.seed)
    if args.arch == "lstm":
        lopt = LSTMOptimizer(**({"hidden": args.hidden} if args.hidden else {}))
    elif args.arch == "mlp":
        lopt = MLPOptimizer(**({"hidden": args.hidden} if args.hidden else {}))
    else:
        lopt = PolicyOptimizer(
            **({"hidden": args.hidden} if args.hidden else {}),
            step_scale=getattr(args, "step_scale", 0.1),
            learn_std=not getattr(args, "fixed_std", False),
        )
    if getattr(args, "init_weights", None):
        lopt.load_weights(args.init_weights)  # names any tensor of another architecture or size
    cfg = MetaConfig(
        method=args.method,
        unroll=args.unroll,
        horizon=args.horizon,
        batch=args.batch,
        meta_lr=args.meta_lr,
        clip=args.clip,
        second_order=args.second_order,
        es_pairs=args.es_pairs,
        es_sigma=args.es_sigma,
        seed=args.seed,
        weight_halflife=args.weight_halflife,
        log_loss=args.log_loss,
        meta_lr_decay=args.meta_lr_decay,
        stagger=getattr(args, "stagger", 1),
        shards=getattr(args, "shards", None) or default_shards(args.method, comm),
        options=dict(getattr(args, "option", None) or []),
    )
    task = make_task(args.task, split="train", rows=getattr(args, "rows", 0))
    return MetaTrainer(lopt, task, cfg, comm=Comm() if comm is None else comm)


def default_shards(method: str, comm) -> int:
    """TBPTT: one random stream per process; the other methods draw one stream."""
    return comm.world if comm is not None and method == "tbptt" else 1


def torch_seed(seed: int) -> None:
    """Initial optimizer weights come from torch's global generator: seed it explicitly."""
    import torch

    torch.manual_seed(seed)


def estimator_counters(trainer) -> dict[str, float | int | None]:
    """The estimator state's scalar tensors (e.g. PPO's ``nonfinite``, ``episodes``, ``mean_return``); a
    non-finite value as ``None``."""
    import math
    from dataclasses import fields

    out: dict[str, float | int | None] = {}
    for f in fields(trainer.state):
        v = getattr(trainer.state, f.name)
        if f.name != "carries" and hasattr(v, "dim") and v.dim() == 0:
            x = v.item()
            out[f.name] = x if not isinstance(x, float) or math.isfinite(x) else None
    return out


def run(args: argparse.Namespace, callback=None) -> int:
    """Meta-train; under ``torchrun`` joins the process group first and leaves it at the end."""
    from ..distributed import exit_worker, init_from_env, shutdown

    comm = init_from_env()
    try:
        code = _run(args, comm, callback)
    except BaseException:
        shutdown(comm)
        raise
    exit_worker(comm, code)  # under torchrun the process ends here (see exit_worker)
    return code


def _run(args: argparse.Namespace, comm, callback=None) -> int:
    import torch

    from .meta import latest_checkpoint_exists, meta_train

    torch.set_num_threads(args.threads)
    trainer = build(args, comm)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.safetensors"
    resumed = bool(args.resume and latest_checkpoint_exists(ckpt))
    start = time.perf_counter()
    meta_train(
        trainer,
        args.meta_steps,
        checkpoint=ckpt,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        progress=not args.no_progress,
        callback=callback,
    )
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_rss_mb = usage.ru_maxrss / 1024
    record = {
        "command": "doubleopt " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:])),
        "arch": args.arch,
        "task": args.task,
        "task_name": trainer.task.name,
        "init_weights": getattr(args, "init_weights", None),
        "lopt_config": trainer.lopt.config(),
        "meta_config": asdict(trainer.config),
        "meta_steps": trainer.meta_step,
        "skipped_meta_steps": trainer.skipped,
        "trajectories": trainer.trajectories,
        "wall_time_s": wall,  # of this run only: when resumed, the earlier runs' time is not included
        "resumed": resumed,
        "threads": args.threads,
        "processes": comm.world,  # data-parallel processes (torchrun); the times and usage below are rank 0's
        "cpu_time_s_process": usage.ru_utime + usage.ru_stime,
        "peak_saved_for_backward_MB": trainer.peak_saved_bytes / 2**20,
        "peak_rss_MB": peak_rss_mb,
        "final_meta_loss_mean_last_25": sum(trainer.losses[-25:]) / max(1, len(trainer.losses[-25:])),
        "estimator_counters": estimator_counters(trainer),
        "torch": torch.__version__,
    }
    if not comm.is_main:
        return 0
    weights = out / f"{args.arch}-{args.task}.safetensors"
    trainer.lopt.save_weights(weights, metadata={"record": record})
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"wrote {weights} ({trainer.meta_step} meta-steps, {trainer.skipped} skipped, {wall:.0f} s, "
        f"peak saved-for-backward {record['peak_saved_for_backward_MB']:.0f} MB, "
        f"peak RSS {peak_rss_mb:.0f} MB)"
    )
    return 0
