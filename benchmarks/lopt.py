"""Learned optimizers vs tuned baselines (Andrychowicz et al. 2016 on this machine's data).

Runs the shipped LSTM and MLP optimizers (meta-trained on the digits MLP task, train split, 100 steps) and
SGD / Nesterov / RMSProp / Adam, each with its learning rate tuned by a log-grid search on the training task,
on held-out tasks (test split, new seeds):

* base: one hidden layer of 20 sigmoid units, 100 steps (the training task's architecture)
* (a) 200 steps  (b) 40 hidden units  (c) two hidden layers of 20  (d) ReLU instead of sigmoid
* 10-d quadratics ||W theta - y||^2 with an LSTM meta-trained here on quadratics (``--quad-meta-steps``),
  baselines tuned on quadratics.

The loss reported at each step is the full-split cross-entropy of the optimizee (all rows of its split), mean
and standard deviation over ``--runs`` independent optimizee runs (independent inits and minibatches; every
optimizer sees the same inits and minibatch sequence). Also times one optimizee step of each optimizer
relative to Adam (same process, same batch).

Run: ``doubleopt bench lopt`` (``-- --quick`` for a seconds-long smoke run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import doubleopt as do
from doubleopt.bench import Report, conditions, parse_args, set_threads, time_call
from doubleopt.learned import DigitsMLPTask, LSTMOptimizer, QuadraticTask, load_pretrained
from doubleopt.learned.meta import MetaConfig, MetaTrainer, meta_train, rollout, start_trajectory
from doubleopt.problems import ClassificationContext


@dataclass
class Args:
    quick: bool = False  # tiny sizes: a smoke run of a few seconds
    runs: int = 20  # independent optimizee runs per (task, optimizer): the spread is over these
    steps: int = 100  # optimizee steps of the base task (generalization (a) uses 2x)
    seed: int = 1000  # seed of the evaluation runs (meta-training used seeds 0..; tuning uses seed + 1)
    lr_grid_min: float = 1e-4  # log-grid of learning rates for the baselines: from
    lr_grid_max: float = 10.0  # ... to
    lr_grid_points: int = 16  # ... with this many points
    tune_runs: int = 10  # optimizee runs per grid point (train split; criterion: mean loss at the last step)
    quad_meta_steps: int = 1000  # meta-steps of the LSTM trained here on 10-d quadratics (TBPTT, K=20, T=100)
    threads: int = 1  # torch threads (fixed; reported)
    out: str = "bench_results/lopt"  # output folder


BASELINES = {
    "SGD": lambda lr: do.GD(lr=lr),
    "Nesterov": lambda lr: do.Nesterov(lr=lr, momentum=0.9),
    "RMSProp": lambda lr: do.RMSProp(lr=lr),
    "Adam": lambda lr: do.Adam(lr=lr),
}


def full_split_loss(task: DigitsMLPTask):
    """theta -> (B,) cross-entropy over every row of the task's split (a low-noise training-loss curve)."""
    X, t = task.problem.data_inputs, task.problem.data_labels

    def fn(theta, inst):
        B = theta.shape[0]
        return task.problem.objective(theta, ClassificationContext(X.expand(B, *X.shape), t.expand(B, *t.shape)))

    return fn


def curves(solver, task, eval_fn, runs, steps, seed):
    out = rollout(solver, task, runs, steps, torch.Generator().manual_seed(seed), eval_fn)
    return torch.nan_to_num(out.double(), nan=float("inf"))  # a diverged run counts as infinite loss


def tune(name, task, eval_fn, args, steps):
    grid = torch.logspace(math.log10(args.lr_grid_min), math.log10(args.lr_grid_max), args.lr_grid_points)
    best = (float("inf"), None)
    for lr in grid.tolist():
        final = float(curves(BASELINES[name](lr), task, eval_fn, args.tune_runs, steps, args.seed + 1)[-1].mean())
        if final < best[0]:
            best = (final, lr)
    return best[1]


def first_step_below(mean_curve, target):
    idx = torch.nonzero(mean_curve <= target).flatten()
    return int(idx[0]) if len(idx) else None


def main(argv=None):
    args = parse_args(Args, argv)
    if args.quick:
        args.runs, args.steps, args.tune_runs, args.lr_grid_points, args.quad_meta_steps = 3, 6, 2, 2, 2
    set_threads(args.threads)
    train_task = DigitsMLPTask(split="train")
    learned = {
        "LSTM (learned)": load_pretrained("lstm-digits"),
        "MLP (learned)": load_pretrained("mlp-digits"),
    }

    print("tuning baseline learning rates on the training task ...", flush=True)
    lrs = {n: tune(n, train_task, full_split_loss(train_task), args, args.steps) for n in BASELINES}
    print("  ", {k: f"{v:.3g}" for k, v in lrs.items()}, flush=True)

    settings = {
        "base (test split)": (DigitsMLPTask(split="test"), args.steps),
        "(a) 200 steps": (DigitsMLPTask(split="test"), 2 * args.steps),
        "(b) 40 hidden": (DigitsMLPTask(hidden=(40,), split="test"), args.steps),
        "(c) 2 hidden layers": (DigitsMLPTask(hidden=(20, 20), split="test"), args.steps),
        "(d) ReLU": (DigitsMLPTask(activation="relu", split="test"), args.steps),
    }
    results = {}
    for setting, (task, steps) in settings.items():
        ev = full_split_loss(task)
        opts = {
            **{k: v.as_solver() for k, v in learned.items()},
            **{n: BASELINES[n](lrs[n]) for n in BASELINES},
        }
        results[setting] = {n: curves(s, task, ev, args.runs, steps, args.seed) for n, s in opts.items()}
        print(
            f"  {setting}: " + ", ".join(f"{n} {float(c[-1].mean()):.3f}" for n, c in results[setting].items()),
            flush=True,
        )

    # 10-d quadratics: an LSTM meta-trained here (the paper trains one per task family)
    quad = QuadraticTask()
    torch.manual_seed(0)
    qlstm = LSTMOptimizer()
    quad_cfg = MetaConfig(
        unroll=20 if not args.quick else 2,
        horizon=100 if not args.quick else 4,
        batch=16,
        meta_lr=3e-3,
        seed=0,
    )
    meta_train(MetaTrainer(qlstm, quad, quad_cfg), args.quad_meta_steps, progress=True)
    qlrs = {n: tune(n, quad, None, args, args.steps) for n in BASELINES}
    qopts = {"LSTM (learned)": qlstm.as_solver(), **{n: BASELINES[n](qlrs[n]) for n in BASELINES}}
    results["10-d quadratic"] = {n: curves(s, quad, None, args.runs, args.steps, args.seed) for n, s in qopts.items()}

    # wall-clock of one optimizee step (base task, batch = runs), relative to Adam
    task = DigitsMLPTask(split="test")
    step_time = {}
    for n, s in {
        **{k: v.as_solver() for k, v in learned.items()},
        **{n: BASELINES[n](lrs[n]) for n in BASELINES},
    }.items():
        gen = torch.Generator().manual_seed(0)
        carry = start_trajectory(s, task, args.runs, gen)
        x = task.train_batch(carry.inst, gen)
        with torch.no_grad():
            step_time[n] = time_call(
                lambda s=s, carry=carry, x=x: s.step(task.problem, carry.y, x, carry.state),
                warmup=2,
                repeats=5 if args.quick else 20,
            ).median

    # meta-training memory: tensors saved for backward in one TBPTT meta-step (LSTM, digits, 8 optimizees)
    # grows with the truncation K and not with the horizon T; ES/PES save nothing for backward
    memory_mb = {}
    for K in (2, 4) if args.quick else (5, 10, 20):
        torch.manual_seed(0)
        tr = MetaTrainer(LSTMOptimizer(), train_task, MetaConfig(unroll=K, horizon=100, batch=2 if args.quick else 8))
        tr.step()
        memory_mb[f"tbptt K={K}"] = tr.peak_saved_bytes / 2**20
    print("saved-for-backward MB per TBPTT meta-step:", memory_mb, flush=True)

    report = Report("lopt", out_dir=args.out)
    for setting, res in results.items():
        for n, c in res.items():
            T = c.shape[0] - 1
            half = c[T // 2 :].mean(0)  # mean over steps T/2..T per run
            report.add_row(
                task=setting,
                optimizer=n,
                lr=(qlrs if "quadratic" in setting else lrs)[n] if "learned" not in n else "-",
                final_mean=float(c[-1].mean()),
                final_std=float(c[-1].std()),
                mean_2nd_half=float(half.mean()),
                mean_2nd_half_std=float(half.std()),
                step_time_rel_adam=(step_time[n] / step_time["Adam"])
                if setting.startswith("base") and n in step_time
                else "",
            )
    goals = {}
    for lname in ("LSTM (learned)", "MLP (learned)"):
        base = results["base (test split)"]
        adam, lc = base["Adam"].mean(1), base[lname].mean(1)
        T = args.steps
        reach = first_step_below(lc, float(adam[T]))
        g = {
            "mean_loss_steps_50_100": float(lc[T // 2 :].mean()),
            "adam_mean_loss_steps_50_100": float(adam[T // 2 :].mean()),
            "beats_adam_mean_50_100": bool(lc[T // 2 :].mean() < adam[T // 2 :].mean()),
            "first_step_reaching_adam_final": reach,
            "reaches_adam_final_within_half": reach is not None and reach <= T // 2,
        }
        for s in ("(a) 200 steps", "(b) 40 hidden", "(c) 2 hidden layers", "(d) ReLU"):
            r = results[s]
            g[f"final_ratio_vs_adam {s}"] = float(r[lname][-1].mean() / r["Adam"][-1].mean())
            g[f"matches_adam_final {s}"] = bool(r[lname][-1].mean() <= r["Adam"][-1].mean())
        goals[lname] = g
    print(report.table())
    for k, v in goals.items():
        print(k, v)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 9), constrained_layout=True)
    colors = {
        "LSTM (learned)": "C3",
        "MLP (learned)": "C4",
        "SGD": "C0",
        "Nesterov": "C1",
        "RMSProp": "C2",
        "Adam": "k",
    }
    for ax, (setting, res) in zip(axes.flat, results.items()):
        for n, c in res.items():
            c = c.clamp_max(1e3)
            m = c.mean(1)
            lo, hi = torch.quantile(c, 0.25, dim=1), torch.quantile(c, 0.75, dim=1)
            steps = torch.arange(len(m))
            ax.plot(steps, m, color=colors[n], label=n, lw=2 if "learned" in n else 1.2)
            ax.fill_between(steps, lo, hi, color=colors[n], alpha=0.15)
        ax.set_yscale("log")
        ax.set_title(setting)
        ax.set_xlabel("optimizee step")
        ax.set_ylabel("loss (full split)" if "quadratic" not in setting else "||W theta - y||^2")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(
        f"Learned optimizers vs tuned baselines: mean (line), interquartile range (band), {args.runs} runs "
        f"(threads={args.threads}, float32)"
    )
    path = report.save(
        {
            "args": vars(args),
            "conditions": conditions(batch=args.runs, dtype="float32", note="2-core machine shared with other jobs"),
            "tuned_lr_digits": lrs,
            "tuned_lr_quadratic": qlrs,
            "goals": goals,
            "step_time_s": step_time,
            "tbptt_saved_for_backward_MB": memory_mb,
            "curves_mean": {s: {n: c.mean(1).tolist() for n, c in r.items()} for s, r in results.items()},
            "curves_std": {s: {n: c.std(1).tolist() for n, c in r.items()} for s, r in results.items()},
        },
        fig,
    )
    print(f"wrote {path}")
    return goals


if __name__ == "__main__":
    main()
