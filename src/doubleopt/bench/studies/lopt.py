"""Learned optimizers vs tuned baselines (Andrychowicz et al. 2016 on this machine's data).

Runs the shipped LSTM and MLP optimizers (meta-trained on the digits MLP task, train split, 100 steps) against
SGD / Nesterov / RMSProp / Adam, each baseline with its learning rate tuned by a log-grid search. Two
protocols, reported side by side (column ``protocol``):

* **standard** (the headline): each optimizee trains on minibatches of the *training* digits (1348 rows) and
  is scored on the *held-out* digits (the 449-row test split, never seen in training): held-out
  cross-entropy and accuracy. Settings vary one factor at a time around the base (one hidden layer of 20
  sigmoid units, 100 steps): widths ``--widths``, depths ``--depths`` (hidden layers of 20), activations
  ``--activations`` and horizons ``--horizons`` (optimizee steps; the learned optimizers were meta-trained
  on 100). Each baseline's learning rate is tuned **per setting** on a validation split: trained on the
  training digits minus ``--val-rows`` rows, scored (held-out loss at the last step) on those rows; the test
  digits play no part in tuning. Column ``vs_tuned_adam`` says plainly whether each optimizer loses to, beats
  or ties tuned Adam on the held-out loss: paired over the runs (same inits, same minibatches), a
  difference of more than two standard errors decides.
* **optimization** (fits the test split): the optimizee trains on minibatches of the 449-row test split and
  is scored by its full-split training loss on the same rows; baselines tuned once on the base training
  task. This measures optimization speed only (the loss falls to ~1e-3, where small absolute differences
  show up as large ratios); settings (a) 200 steps, (b) 40 hidden units, (c) two hidden layers of 20,
  (d) ReLU; and 10-d quadratics ||W theta - y||^2 with an LSTM meta-trained here on quadratics
  (``--quad-meta-steps``), baselines tuned on quadratics.

What is compared: in every setting all optimizers see the same ``--runs`` initializations and the same
minibatch sequence, the same gradient (autograd on the same minibatch), the same number of steps, the same
``--threads`` torch threads, float32; every optimizee starts cold (its initialization). Losses: mean and
standard deviation over the runs (a diverged run counts as infinite loss). Also times one optimizee step of
each optimizer relative to Adam (same process, same batch; warm-up + median of repeats).

Run: ``doubleopt bench lopt`` (``-- --quick`` for a seconds-long smoke run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import doubleopt as do
from doubleopt.bench import Report, conditions, generator, parse_args, seed_all, set_threads, time_call
from doubleopt.learned import DigitsMLPTask, LSTMOptimizer, QuadraticTask, load_pretrained
from doubleopt.learned.meta import MetaConfig, MetaTrainer, meta_train, rollout, start_trajectory, unroll
from doubleopt.problems import ClassificationContext, load_dataset


@dataclass
class Args:
    """Learned optimizers (the shipped LSTM and MLP, meta-trained on digits) vs SGD / Nesterov / RMSProp / Adam.

    What is compared: held-out cross-entropy and accuracy on the digits test split of optimizees trained on the
    training digits (standard protocol, the headline; widths, depths, activations and horizons varied one at a
    time), and the training loss of optimizees fitted to the 449-row test split (optimization protocol: speed
    only) and on 10-d quadratics. In every setting all optimizers see the same ``--runs`` initializations and
    minibatches (cold starts), the same autograd gradient and number of steps, float32, ``--threads`` threads;
    each baseline's learning rate is tuned by a log-grid search (standard: per setting, on validation rows of
    the training digits). ``vs_tuned_adam`` is a paired comparison with tuned Adam (two standard errors). One
    optimizee step is timed relative to Adam (warm-up + median).

    Seeds (set once at the top of ``main``): ``--seed`` the evaluation runs (initializations and minibatches),
    ``seed + 1`` the tuning runs; ``--setup-seed`` torch's global generator (its first draw: the initial weights
    of the LSTM meta-trained on quadratics), that meta-training, and the validation rows of the training digits.
    """

    quick: bool = False  # tiny sizes: a smoke run of a few seconds
    runs: int = 20  # independent optimizee runs per (task, optimizer): the spread is over these
    steps: int = 100  # optimizee steps of the base task (generalization (a) uses 2x)
    seed: int = 1000  # seed of the evaluation runs (meta-training used seeds 0..; tuning uses seed + 1)
    setup_seed: int = 0  # global generator (quadratic LSTM's initial weights), its meta-training, validation rows
    lr_grid_min: float = 1e-4  # log-grid of learning rates for the baselines: from
    lr_grid_max: float = 10.0  # ... to
    lr_grid_points: int = 16  # ... with this many points
    tune_runs: int = 10  # optimizee runs per grid point (criterion: mean loss at the last step)
    widths: tuple = (20, 40, 80)  # standard protocol: hidden widths (one layer; the first is the base)
    depths: tuple = (1, 2, 3)  # standard protocol: hidden layers of 20 units (the first is the base)
    activations: tuple = ("sigmoid", "relu", "tanh")  # standard protocol: activations (the first is the base)
    horizons: tuple = (100, 300, 1000)  # standard protocol: optimizee steps (the first is the base)
    val_rows: int = 300  # standard protocol: training rows held out to tune the baselines' learning rates
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
    return split_metric(task, task.problem.data_inputs, task.problem.data_labels, "loss")


def split_metric(task: DigitsMLPTask, X, t, metric: str):
    """theta -> (B,) cross-entropy (``"loss"``) or accuracy (``"accuracy"``) of each network on the rows X, t."""

    def fn(theta, inst=None):
        B = theta.shape[0]
        ctx = ClassificationContext(X.expand(B, *X.shape), t.expand(B, *t.shape))
        return task.problem.objective(theta, ctx) if metric == "loss" else task.problem.accuracy(theta, ctx)

    return fn


def optimizers(learned, lrs) -> dict:
    """The learned optimizers as solvers and the baselines at their tuned learning rates."""
    return {**{k: v.as_solver() for k, v in learned.items()}, **{n: BASELINES[n](lrs[n]) for n in BASELINES}}


def curves(solver, task, eval_fn, runs, steps, seed):
    out = rollout(solver, task, runs, steps, generator(seed), eval_fn)
    return torch.nan_to_num(out.double(), nan=float("inf"))  # a diverged run counts as infinite loss


def grid(args):
    return torch.logspace(math.log10(args.lr_grid_min), math.log10(args.lr_grid_max), args.lr_grid_points).tolist()


def tune(name, task, eval_fn, args, steps):
    best = (float("inf"), None)
    for lr in grid(args):
        final = float(curves(BASELINES[name](lr), task, eval_fn, args.tune_runs, steps, args.seed + 1)[-1].mean())
        if final < best[0]:
            best = (final, lr)
    return best[1]


def train_final(solver, task, runs, steps, seed, eval_fn=None):
    """Run ``runs`` optimizees for ``steps`` steps: ``(eval_fn curve (steps + 1, runs) or None, final theta)``;
    without ``eval_fn`` nothing is evaluated along the way."""
    gen = generator(seed)
    skip = lambda theta, inst: theta.new_zeros(theta.shape[0])  # noqa: E731
    with torch.no_grad():
        carry = start_trajectory(solver, task, runs, gen)
        first = (eval_fn or skip)(carry.y, carry.inst)
        losses, carry = unroll(solver, task, carry, steps, gen, eval_fn or skip)
    curve = torch.nan_to_num(torch.cat([first[None], losses]).double(), nan=float("inf")) if eval_fn else None
    return curve, carry.y


def digits_task(hidden, activation, rows=None) -> DigitsMLPTask:
    """The digits MLP task on the training split, or on the training rows ``rows`` only."""
    task = DigitsMLPTask(hidden=tuple(hidden), activation=activation, split="train")
    if rows is not None:
        task.problem.data_inputs = task.problem.data_inputs[rows]
        task.problem.data_labels = task.problem.data_labels[rows]
    return task


def verdict(c, adam) -> str:
    """Paired comparison of the final held-out losses of one optimizer (``c``) and tuned Adam over the runs."""
    d = (c[-1] - adam[-1]).clamp(-1e6, 1e6)
    if bool(torch.equal(c[-1], adam[-1])):
        return "-"
    se = float(d.std() / math.sqrt(len(d))) if len(d) > 1 else 0.0
    mean = float(d.mean())
    if mean > 2 * se:
        return "loses to tuned Adam"
    if mean < -2 * se:
        return "beats tuned Adam"
    return "ties tuned Adam (within 2 s.e.)"


def standard_settings(args) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """One factor at a time around the base: ``name -> (hidden, activation, steps)``."""
    w0, d0, a0, h0 = args.widths[0], args.depths[0], args.activations[0], args.horizons[0]
    base = ((w0,) * d0, a0, h0)
    out = {f"base ({d0}x{w0} {a0}, {h0} steps)": base}
    out.update({f"width {w}": ((w,) * d0, a0, h0) for w in args.widths[1:]})
    out.update({f"depth {d}x{w0}": ((w0,) * d, a0, h0) for d in args.depths[1:]})
    out.update({f"activation {a}": ((w0,) * d0, a, h0) for a in args.activations[1:]})
    out.update({f"horizon {h} steps": ((w0,) * d0, a0, h) for h in args.horizons[1:]})
    return out


def standard_protocol(args, learned) -> dict:
    """Optimizees trained on the training digits, scored on the held-out digits; baselines tuned per setting
    on a validation split of the training digits. Returns ``setting -> {lrs, curves, acc, train_loss}``."""
    X_test, t_test = load_dataset("digits", "test")
    n_train = load_dataset("digits", "train")[0].shape[0]
    perm = torch.randperm(n_train, generator=generator(args.setup_seed))
    val_idx, fit_idx = perm[: args.val_rows], perm[args.val_rows :]
    out = {}
    for setting, (hidden, act, steps) in standard_settings(args).items():
        fit_task, task = digits_task(hidden, act, fit_idx), digits_task(hidden, act)
        X_val, t_val = task.problem.data_inputs[val_idx], task.problem.data_labels[val_idx]
        val_loss = split_metric(fit_task, X_val, t_val, "loss")
        lrs = {}
        for name in BASELINES:  # tuned on the validation rows (trained on the others), never on the test digits
            scores = []
            for lr in grid(args):
                _, theta = train_final(BASELINES[name](lr), fit_task, args.tune_runs, steps, args.seed + 1)
                scores.append(float(torch.nan_to_num(val_loss(theta), nan=float("inf")).mean()))
            lrs[name] = grid(args)[min(range(len(scores)), key=scores.__getitem__)]
        test_loss = split_metric(task, X_test, t_test, "loss")
        test_acc = split_metric(task, X_test, t_test, "accuracy")
        train_loss = full_split_loss(task)
        opts = optimizers(learned, lrs)
        res = {"lrs": lrs, "curves": {}, "acc": {}, "train_loss": {}}
        for n, solver in opts.items():
            curve, theta = train_final(solver, task, args.runs, steps, args.seed, test_loss)
            res["curves"][n] = curve
            res["acc"][n] = torch.nan_to_num(test_acc(theta).double(), nan=0.0)
            res["train_loss"][n] = torch.nan_to_num(train_loss(theta).double(), nan=float("inf"))
        out[setting] = res
        print(
            f"  standard, {setting}: held-out loss / accuracy "
            + ", ".join(f"{n} {float(c[-1].mean()):.3f} / {float(res['acc'][n].mean()):.3f}"
                        for n, c in res["curves"].items()),
            flush=True,
        )
    return out


def first_step_below(mean_curve, target):
    idx = torch.nonzero(mean_curve <= target).flatten()
    return int(idx[0]) if len(idx) else None


def optimization_protocol(args, learned, train_task, qlstm: LSTMOptimizer):
    """Optimizees trained on the 449-row test split and scored on the same rows (optimization speed only);
    baselines tuned once on the base training task. Also the 10-d quadratics, with ``qlstm`` (untrained)
    meta-trained on them here. Returns (results, lrs, qlrs)."""
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
        opts = optimizers(learned, lrs)
        results[setting] = {n: curves(s, task, ev, args.runs, steps, args.seed) for n, s in opts.items()}
        print(
            f"  optimization, {setting}: "
            + ", ".join(f"{n} {float(c[-1].mean()):.3f}" for n, c in results[setting].items()),
            flush=True,
        )

    # 10-d quadratics: an LSTM meta-trained here (the paper trains one per task family)
    quad = QuadraticTask()
    quad_cfg = MetaConfig(
        unroll=20 if not args.quick else 2,
        horizon=100 if not args.quick else 4,
        batch=16,
        meta_lr=3e-3,
        seed=args.setup_seed,
    )
    meta_train(MetaTrainer(qlstm, quad, quad_cfg), args.quad_meta_steps, progress=True)
    qlrs = {n: tune(n, quad, None, args, args.steps) for n in BASELINES}
    qopts = {"LSTM (learned)": qlstm.as_solver(), **{n: BASELINES[n](qlrs[n]) for n in BASELINES}}
    results["10-d quadratic"] = {n: curves(s, quad, None, args.runs, args.steps, args.seed) for n, s in qopts.items()}
    return results, lrs, qlrs


def step_times(args, learned, lrs) -> dict[str, float]:
    """Wall-clock of one optimizee step (base task, batch = runs), warm-up + median."""
    task = DigitsMLPTask(split="test")
    out = {}
    for n, s in optimizers(learned, lrs).items():
        gen = generator(args.setup_seed)
        carry = start_trajectory(s, task, args.runs, gen)
        x = task.train_batch(carry.inst, gen)
        with torch.no_grad():
            out[n] = time_call(
                lambda s=s, carry=carry, x=x: s.step(task.problem, carry.y, x, carry.state),
                warmup=2,
                repeats=5 if args.quick else 20,
            ).median
    return out


def tbptt_memory(args, train_task) -> dict[str, float]:
    """Tensors saved for backward in one TBPTT meta-step (LSTM, digits, 8 optimizees): they grow with the
    truncation K and not with the horizon T; ES/PES save nothing for backward. (A size: the weights' values,
    drawn from the global generator, do not change it.)"""
    out = {}
    for K in (2, 4) if args.quick else (5, 10, 20):
        tr = MetaTrainer(LSTMOptimizer(), train_task, MetaConfig(unroll=K, horizon=100, batch=2 if args.quick else 8))
        tr.step()
        out[f"tbptt K={K}"] = tr.peak_saved_bytes / 2**20
    return out


def standard_rows(args: Args, standard: dict, report: Report) -> None:
    """One row per (setting, optimizer) of the standard protocol (held-out loss and accuracy)."""
    common = {"threads": args.threads, "grad": "autograd (same minibatches)", "start": "cold (same inits)"}
    for setting, res in standard.items():
        adam = res["curves"]["Adam"]
        for n, c in res["curves"].items():
            T = c.shape[0] - 1
            report.add_row(
                protocol="standard: train on training digits, score on held-out digits",
                task=setting,
                optimizer=n,
                lr=res["lrs"][n] if n in res["lrs"] else "-",
                lr_tuned_on="validation rows of the training digits" if n in res["lrs"] else "-",
                steps=T,
                final_loss=float(c[-1].mean()),
                final_loss_std=float(c[-1].std()),
                heldout_accuracy=float(res["acc"][n].mean()),
                heldout_accuracy_std=float(res["acc"][n].std()),
                train_loss=float(res["train_loss"][n].mean()),
                mean_2nd_half=float(c[T // 2 :].mean(0).mean()),
                vs_tuned_adam=verdict(c, adam),
                step_time_rel_adam="",
                **common,
            )


def optimization_rows(args: Args, results: dict, lrs: dict, qlrs: dict, step_time: dict, report: Report) -> None:
    """One row per (setting, optimizer) of the optimization protocol and the quadratics (training loss)."""
    common = {"threads": args.threads, "grad": "autograd (same minibatches)", "start": "cold (same inits)"}
    for setting, res in results.items():
        quadratic = "quadratic" in setting
        for n, c in res.items():
            T = c.shape[0] - 1
            half = c[T // 2 :].mean(0)  # mean over steps T/2..T per run
            report.add_row(
                protocol="quadratics (fixed instances)" if quadratic else "optimization: fits the 449-row test split",
                task=setting,
                optimizer=n,
                lr=(qlrs if quadratic else lrs)[n] if "learned" not in n else "-",
                lr_tuned_on=("quadratics" if quadratic else "base training task") if "learned" not in n else "-",
                steps=T,
                final_loss=float(c[-1].mean()),
                final_loss_std=float(c[-1].std()),
                heldout_accuracy=float("nan"),
                heldout_accuracy_std=float("nan"),
                train_loss=float(c[-1].mean()),
                mean_2nd_half=float(half.mean()),
                vs_tuned_adam=verdict(c, res["Adam"]),
                step_time_rel_adam=(step_time[n] / step_time["Adam"])
                if setting.startswith("base") and n in step_time
                else "",
                **{**common, "grad": "autograd (same instances)"} if quadratic else common,
            )


def learned_goals(args: Args, standard: dict, results: dict) -> dict:
    """For each learned optimizer: where it beats, ties or loses to tuned Adam (both protocols)."""
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
        verdicts = {s: verdict(res["curves"][lname], res["curves"]["Adam"]) for s, res in standard.items()}
        g["standard: loses to tuned Adam (held-out loss)"] = [s for s, v in verdicts.items() if v.startswith("loses")]
        g["standard: beats tuned Adam (held-out loss)"] = [s for s, v in verdicts.items() if v.startswith("beats")]
        g["standard: held-out accuracy minus tuned Adam's"] = {
            s: float(res["acc"][lname].mean() - res["acc"]["Adam"].mean()) for s, res in standard.items()
        }
        goals[lname] = g
    return goals


def main(argv=None):
    args = parse_args(Args, argv)
    if args.quick:
        args.runs, args.steps, args.tune_runs, args.lr_grid_points, args.quad_meta_steps = 3, 6, 2, 2, 2
        args.widths, args.depths, args.activations, args.horizons = (20, 40), (1, 2), ("sigmoid", "relu"), (6, 12)
    set_threads(args.threads)
    seed_all(args.setup_seed)  # the other streams (evaluation, tuning, validation rows) are derived: see Args
    quad_lstm = LSTMOptimizer()  # meta-trained on quadratics below; its initial weights: the global generator's first
    started = conditions(batch=args.runs, dtype="float32")
    train_task = DigitsMLPTask(split="train")
    learned = {
        "LSTM (learned)": load_pretrained("lstm-digits"),
        "MLP (learned)": load_pretrained("mlp-digits"),
    }

    # ---- run: the standard protocol, the optimization protocol (and quadratics), step times, TBPTT memory ----
    print("standard protocol: train on the training digits, score on the held-out digits ...", flush=True)
    standard = standard_protocol(args, learned)
    results, lrs, qlrs = optimization_protocol(args, learned, train_task, quad_lstm)
    step_time = step_times(args, learned, lrs)
    memory_mb = tbptt_memory(args, train_task)
    print("saved-for-backward MB per TBPTT meta-step:", memory_mb, flush=True)

    # ---- report ----
    report = Report("lopt", out_dir=args.out)
    standard_rows(args, standard, report)
    optimization_rows(args, results, lrs, qlrs, step_time, report)
    goals = learned_goals(args, standard, results)
    print(report.table())
    for k, v in goals.items():
        print(k, v)
    for lname, g in goals.items():
        lost = g["standard: loses to tuned Adam (held-out loss)"]
        print(f"{lname} loses to tuned Adam on held-out digits in {len(lost)} of {len(standard)} settings"
              + (f": {', '.join(lost)}" if lost else ""))
    path = report.save(
        {
            "args": vars(args),
            "conditions": started,
            "tuned_lr_digits": lrs,
            "tuned_lr_quadratic": qlrs,
            "tuned_lr_standard": {s: r["lrs"] for s, r in standard.items()},
            "goals": goals,
            "step_time_s": step_time,
            "tbptt_saved_for_backward_MB": memory_mb,
            "curves_mean": {s: {n: c.mean(1).tolist() for n, c in r.items()} for s, r in results.items()},
            "curves_std": {s: {n: c.std(1).tolist() for n, c in r.items()} for s, r in results.items()},
            "standard_heldout_loss_mean": {
                s: {n: c.mean(1).tolist() for n, c in r["curves"].items()} for s, r in standard.items()
            },
        },
        figure(args, standard, results),
    )
    print(f"wrote {path}")
    return goals


COLORS = {"LSTM (learned)": "C3", "MLP (learned)": "C4", "SGD": "C0", "Nesterov": "C1", "RMSProp": "C2", "Adam": "k"}


def figure(args, standard, results):
    """One panel per setting: mean (line) and interquartile range (band) of the loss over the runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f"standard: {s}", r["curves"], "held-out loss") for s, r in standard.items()]
    panels += [(f"optimization: {s}", r, "loss (full test split, trained on it)") for s, r in results.items()]
    panels[-1] = (panels[-1][0], panels[-1][1], "||W theta - y||^2")
    ncols = 5
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.4 * nrows), constrained_layout=True, squeeze=False)
    for ax, (title, res, ylabel) in zip(axes.flat, panels):
        for n, c in res.items():
            c = c.clamp_max(1e3)
            m = c.mean(1)
            lo, hi = torch.quantile(c, 0.25, dim=1), torch.quantile(c, 0.75, dim=1)
            steps = torch.arange(len(m))
            ax.plot(steps, m, color=COLORS[n], label=n, lw=2 if "learned" in n else 1.2)
            ax.fill_between(steps, lo, hi, color=COLORS[n], alpha=0.15)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizee step")
        ax.set_ylabel(ylabel, fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(
        f"Learned optimizers vs tuned baselines: mean (line), interquartile range (band), {args.runs} runs "
        f"(threads={args.threads}, float32)"
    )
    return fig


if __name__ == "__main__":
    main()
