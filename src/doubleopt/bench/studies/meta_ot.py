"""Meta OT: an MLP predicts the entropic OT dual potential; Sinkhorn refines from it (Amos et al. 2023).

Two tasks: pairs of scikit-learn 8x8 digits as measures on the pixel grid (squared Euclidean cost,
eps = 1e-2 as in Meta OT's MNIST setting), and random von Mises-Fisher mixtures on a 100-point spherical grid
(geodesic cost, eps = 1e-2). For each, a ``PotentialMLP`` is trained on the train split / fresh samples by
maximizing the dual (``do.amortized.fit(..., loss="objective")``), then (``--regression-steps``) by regression
to the converged potentials of ``--regression-pairs`` training pairs (solved once, cached), then
(``--unrolled-train-steps``) by maximizing the dual after ``--unrolled-sinkhorn`` Sinkhorn steps from the
prediction (``fit(SemiAmortized(model, Sinkhorn(), steps=k), loss="objective")``, differentiated through the
steps: the loss sees only the error that the refinement would be slow to remove). ``--swap-average 1`` wraps
the network in ``SwapAveraged`` (its prediction averaged with the c-transform of its prediction for the
swapped pair; symmetric costs) for the unrolled phase and the evaluation. The phases' defaults are per task
(``-1``): digits 10000 regression steps, no unrolled phase, no swap average (the configuration measured
before); sphere no regression (it made the sphere's raw prediction worse), 6000 unrolled steps with k = 50
and the swap average. On held-out pairs we time, to L1 marginal error 1e-2 and 1e-4 per instance:

* cold: our batched log-domain Sinkhorn from f = 0 as one batch (``do.solve(fam, Sinkhorn(loop_compact_below=0),
  x, tol=t)``: every instance steps until the slowest one finishes),
* warm: the same from the predicted potential (``SemiAmortized(model, Sinkhorn(), steps)``; prediction
  included in the time),
* cold / warm (compacted): the same two loops with ``Sinkhorn(skip_tol=target)``: instances that reached the
  target are gathered out of the batch instead of being recomputed until the slowest one finishes,
* cold / warm (loop-compacted): ``Sinkhorn(loop_compact_below=0.85)``: the solve loop gathers the unfinished
  instances into a smaller batch (recursively) once fewer than 85% remain,
* warm y0 (loop-compacted): ``do.solve(fam, Sinkhorn(loop_compact_below=0.85), x, y0=model(x))``, the
  prediction timed with the solve: the same iterates as "warm (loop-compacted)" without ``SemiAmortized``'s
  wrapper state in the solve loop (about 100 ms per 1000 sphere pairs to 1e-2),
* cold (rounds) / warm safeguarded (rounds): ``Safeguarded`` with its fallback in rounds of growing length
  on the still-uncertified instances (the cold one from a zero potential),
* POT, like for like (the only rows with a ``vs_pot`` ratio): ``ot.sinkhorn`` (float64, kernel method,
  plain steps) in a Python loop over the first ``--pot-pairs`` held-out pairs, against our batched plain
  Sinkhorn on the same pairs, cold (f = 0) and warm (the prediction as ``y0``, timed with the solve), all three
  stopped on one criterion: POT's own, the L2 norm of the current plan's marginal violation
  ``||(P 1 - a, P^T 1 - b)||_2`` (after a step one marginal is exact in both: POT's
  rows, our columns), at the threshold ``target / sqrt(m)`` (which implies L1 marginal error <= target; POT's
  ``stopThr``, ours ``Sinkhorn`` with that L2 norm as its stationarity measure). POT tests its criterion every
  10 iterations (fixed in POT), ours after every step. The achieved L1 and L2 errors of every plan are
  reported (``max_marginal_err``, ``max_marginal_err_l2``). The other rows stop on the L1 marginal error <=
  target and have no POT ratio.

``--relaxation 1.9``: every one of our Sinkhorn solves above except the POT comparison's uses over-relaxed
steps (``Sinkhorn(relaxation=1.9)``, about half the iterations), cold and warm alike; POT and the two rows
compared with it stay plain.

Break-even: training time / (cold time - warm time per instance). Timing, every row POT included: one untimed
warm-up run of the whole batch, then the median of ``--repeats`` runs, ``--threads`` threads for torch and for
NumPy / BLAS (POT), same process; every solve starts from its own start (cold: f = 0, warm: the prediction),
nothing is carried over between repeats; the machine is shared with other jobs.

Run: ``doubleopt bench meta_ot`` (``-- --quick`` for a seconds-long smoke run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

import doubleopt as do
from doubleopt.amortized import (
    FullyAmortized,
    MarginalError,
    PotentialMLP,
    Safeguarded,
    SemiAmortized,
    ZeroPotential,
    break_even,
    fit,
)
from doubleopt.amortized.meta_ot import SwapAveraged
from doubleopt.bench import Report, conditions, parse_args, seed_all, set_threads, time_call
from doubleopt.bench.baselines import require
from doubleopt.solvers import Sinkhorn


@dataclass
class Args:
    """Meta OT: Sinkhorn warm-started from a predicted dual potential vs cold Sinkhorn vs POT (digits, sphere).

    What is compared: the wall time per instance to the same L1 marginal error (``--targets``) on the same
    held-out pairs, float64, ``--threads`` threads (torch and NumPy/BLAS), in the same process: our batched
    Sinkhorn cold (f = 0) and warm (from the network's prediction, its forward pass timed with the solve), with
    the same relaxation and step cap, with and without compaction. The rows with a ``vs_pot`` ratio compare with
    POT's ``ot.sinkhorn`` loop under one stopping criterion (L2 marginal error <= target / sqrt(m), POT's), plain
    steps for both, on the same pairs. Every row: one warm-up, then the median of ``--repeats``.

    Seeds (set once at the top of ``main``): the global generators (the networks' initial weights) and the
    objective phase's training stream from ``--seed``; the regression phase ``seed + 1``, the unrolled phase
    ``seed + 2``, the held-out pairs ``seed + 12345``.
    """

    quick: bool = False  # tiny sizes: a smoke run of a few seconds
    tasks: tuple = ("digits", "sphere")  # which families: digits (8x8 image pairs), sphere (vMF mixtures)
    eps: float = 1e-2  # entropic regularization (Meta OT's choice)
    hidden: int = 512  # width of the potential MLP (2 hidden layers)
    train_steps: int = 12000  # training steps of the MLP (objective loss = negative dual)
    regression_steps: int = -1  # then regression to cached converged potentials (0: none; -1: task default)
    regression_pairs: int = 30000  # training pairs solved once (Sinkhorn to 1e-8) for the regression phase
    regression_lr: float = 3e-4  # Adam learning rate of the regression phase (cosine schedule)
    unrolled_train_steps: int = -1  # then the dual after unrolled_sinkhorn Sinkhorn steps (0: none; -1: task default)
    unrolled_sinkhorn: int = 50  # Sinkhorn steps unrolled in that phase's loss
    unrolled_lr: float = 3e-4  # Adam learning rate of the unrolled phase (cosine schedule)
    swap_average: int = -1  # 1: SwapAveraged model (prediction averaged with the swapped pair's), 0: off, -1: task
    batch_size: int = 128  # training pairs per step
    lr: float = 1e-3  # Adam learning rate (cosine schedule)
    n_test: int = 1000  # held-out pairs
    targets: tuple = (1e-2, 1e-4)  # L1 marginal errors to reach
    max_steps: int = 20000  # Sinkhorn step cap
    relaxation: float = 1.0  # over-relaxation omega of every Sinkhorn here (1 = plain; cold and warm alike)
    pot_pairs: int = 1000  # pairs of the POT comparison (POT's loop and our two rows; time per instance)
    round_steps: int = 16  # first round of the compaction variants (then 32, 64, ...)
    curve_steps: int = 300  # iterations shown in the convergence plot
    repeats: int = 3  # timed repeats (median) of each batched solve
    threads: int = 1  # torch threads (fixed; reported)
    seed: int = 0  # seed of training stream and test pairs
    out: str = "bench_results/meta_ot"  # output folder


# per-task defaults of the arguments left at -1
TASK_DEFAULTS = {
    "digits": {"regression_steps": 10000, "unrolled_train_steps": 0, "swap_average": 0},
    "sphere": {"regression_steps": 0, "unrolled_train_steps": 6000, "swap_average": 1},
}


def task_setting(args, task: str, name: str):
    value = getattr(args, name)
    return TASK_DEFAULTS[task][name] if value == -1 else value


def make_family(task: str, split: str, eps: float):
    if task == "digits":
        return do.problems.DigitsOT(split=split, eps=eps)
    if task == "sphere":
        return do.problems.SphereOT(n_points=100, eps=eps)
    raise ValueError(f"unknown task {task!r}")


@dataclass(frozen=True)
class SinkhornL2(Sinkhorn):
    """Our Sinkhorn stopping on POT's criterion: the L2 norm of the current plan's marginal violation (the row
    marginal; the column marginal is exact after each step), instead of its L1 norm."""

    def stationarity(self, problem, y, x, state):
        return state.grad.norm(dim=-1)


def pot_threshold(fam, target: float) -> float:
    """The L2 marginal-error threshold shared by POT and our rows compared with it: ``target / sqrt(m)``
    (an L2 error at most this has an L1 error at most ``target``)."""
    return target / math.sqrt(fam.m)


def marginal_error_l2(fam, f, x):
    """``(B,)`` L2 norm of the marginal violation of the plan of ``f`` (with ``g`` its c-transform)."""
    return fam.evaluate(f, x).grad.norm(dim=-1)


def plan_errors(P: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """L1 and L2 norms of a plan's marginal violation ``(P 1 - a, P^T 1 - b)``."""
    r = np.concatenate([P.sum(1) - a, P.sum(0) - b])
    return float(np.abs(r).sum()), float(np.linalg.norm(r))


POT = "the Sinkhorn baseline of the meta_ot study"


def pot_loop(fam, x, target: float, max_steps: int, repeats: int):
    """``ot.sinkhorn`` per pair, stopped at L2 marginal error <= ``pot_threshold``; warm-up pass + median of
    ``repeats`` passes. Returns (the Timing of a pass, achieved L1 errors, achieved L2 errors, iterations)."""
    ot = require("ot", POT)

    C = fam.cost.numpy()
    a, b = x.a.numpy(), x.b.numpy()
    thr = pot_threshold(fam, target)  # POT: err = ||P^T 1 - b||_2 every 10 iterations, stop when < stopThr

    def run():
        return [
            ot.sinkhorn(a[i], b[i], C, fam.eps, stopThr=thr, numItermax=max_steps, warn=False, log=True)
            for i in range(len(a))
        ]

    t = time_call(run, warmup=1, repeats=repeats)
    errs = np.array([plan_errors(P, a[i], b[i]) for i, (P, _) in enumerate(t.result)])
    iters = np.array([log["niter"] for _, log in t.result], dtype=float)
    return t, errs[:, 0], errs[:, 1], iters


def error_curve(fam, x, f0, steps: int, relaxation: float = 1.0) -> list[float]:
    """Median L1 marginal error after each Sinkhorn step from f0 (the loop written out, for the plot)."""
    solver = Sinkhorn(relaxation=relaxation)
    f, state = f0, solver.init(fam, f0, x)
    errs = [float(solver.stationarity(fam, f, x, state).median())]
    for _ in range(steps):
        f, state = solver.step(fam, f, x, state)
        errs.append(float(solver.stationarity(fam, f, x, state).median()))
    return errs


def pot_comparison(args, fam, x, model, target: float) -> list[dict]:
    """POT's loop and our batched plain Sinkhorn (cold, and warm from the prediction) on the same pairs, all
    stopped at L2 marginal error <= ``pot_threshold`` (POT's criterion), timed alike: the rows, POT last."""
    n = min(args.pot_pairs, x.a.shape[0])
    xp = type(x)(x.a[:n], x.b[:n])
    thr = pot_threshold(fam, target)
    stop = f"L2 marginal error <= {thr:.3g} (POT's; target/sqrt(m))"
    pot_t, pot_l1, pot_l2, pot_iters = pot_loop(fam, xp, target, args.max_steps, args.repeats)
    pot_per = pot_t.median / n
    solver = SinkhornL2(relaxation=1.0, loop_compact_below=0.85)  # plain steps, as POT
    runs = {
        "cold (loop-compacted), POT's stopping rule": lambda: do.solve(
            fam, solver, xp, tol=thr, max_steps=args.max_steps, throw=False
        ),
        "warm y0 (loop-compacted), POT's stopping rule": lambda: do.solve(
            fam, solver, xp, y0=model(xp), tol=thr, max_steps=args.max_steps, throw=False
        ),
    }
    rows, cold_per = [], float("nan")
    with torch.no_grad():
        for name, fn in runs.items():
            tm = time_call(fn, repeats=args.repeats)
            per = tm.median / n
            cold_per = per if name.startswith("cold") else cold_per
            sol = tm.result
            l2 = marginal_error_l2(fam, sol.y, xp)
            rows.append(
                dict(
                    method=name,
                    stop=stop,
                    pairs=n,
                    ms_per_inst=1e3 * per,
                    speedup_vs_cold=cold_per / per,
                    vs_pot=pot_per / per,
                    iters_median=float(sol.num_steps.float().median()),
                    iters_max=float(sol.num_steps.float().max()),
                    certified=f"{int((l2 <= thr).sum())}/{n}",
                    max_marginal_err=float(fam.marginal_error(sol.y, xp).max()),
                    max_marginal_err_l2=float(l2.max()),
                    break_even_instances=float("nan"),
                )
            )
    rows.append(
        dict(
            method="POT ot.sinkhorn loop",
            stop=stop,
            pairs=n,
            ms_per_inst=1e3 * pot_per,
            speedup_vs_cold=cold_per / pot_per,
            vs_pot=1.0,
            iters_median=float(np.median(pot_iters)),
            iters_max=float(pot_iters.max()),
            certified=f"{int((pot_l2 < thr).sum())}/{n}",
            max_marginal_err=float(pot_l1.max()),
            max_marginal_err_l2=float(pot_l2.max()),
            break_even_instances=float("nan"),
        )
    )
    return rows


def train_task(args: Args, task: str, train_fam, test_fam):
    """The potential MLP of ``task`` trained in its phases (dual objective; regression to converged potentials;
    the dual after unrolled Sinkhorn steps). Returns ``(model used for evaluation, summary)``; the summary's
    ``train_time_s`` includes the reference solves."""
    net = PotentialMLP(test_fam.n, test_fam.m, hidden=args.hidden)
    swap = bool(task_setting(args, task, "swap_average"))
    # the objective / regression phases train the network alone; the unrolled phase and the evaluation use
    # the swap-averaged model (train_fam and test_fam share the cost)
    model = SwapAveraged(net, train_fam) if swap else net
    regression_steps = task_setting(args, task, "regression_steps")
    unrolled_steps = task_setting(args, task, "unrolled_train_steps")
    if args.quick:
        regression_steps, unrolled_steps = min(regression_steps, 10), min(unrolled_steps, 5)
    print(f"== {task}: training the potential MLP ({args.train_steps} steps)")
    fit_res = fit(
        FullyAmortized(net),
        train_fam,
        loss="objective",
        steps=args.train_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        val_every=max(args.train_steps // 10, 1),
    )
    train_time = fit_res.train_time
    if regression_steps > 0:
        print(f"== {task}: regression to {args.regression_pairs} solved pairs ({regression_steps} steps)")
        reg = fit(
            FullyAmortized(net),
            train_fam,
            loss="regression",
            reference=Sinkhorn(relaxation=1.9),  # to the default tol 1e-8
            reference_steps=5000,
            train_size=args.regression_pairs,
            steps=regression_steps,
            batch_size=args.batch_size,
            lr=args.regression_lr,
            seed=args.seed + 1,
            val_every=max(regression_steps // 10, 1),
        )
        train_time += reg.train_time  # includes the reference solves
    if unrolled_steps > 0:
        k = args.unrolled_sinkhorn
        print(f"== {task}: dual after {k} Sinkhorn steps from the prediction ({unrolled_steps} steps)")
        unr = fit(
            SemiAmortized(model, Sinkhorn(loop_compact_below=0.0), steps=k),
            train_fam,
            loss="objective",  # at the last iterate: F(T^k(f_hat)), through the k steps
            steps=unrolled_steps,
            batch_size=args.batch_size,
            lr=args.unrolled_lr,
            seed=args.seed + 2,
            val_every=max(unrolled_steps // 10, 1),
        )
        train_time += unr.train_time
    summary = {
        "train_time_s": train_time,
        "regression_steps": regression_steps,
        "unrolled_train_steps": unrolled_steps,
        "swap_average": swap,
    }
    return model, summary


# each row's speed-up is against the cold row of the same loop kind
COLD_ROW = {
    "cold": "cold",
    "warm": "cold",
    "cold (compacted)": "cold (compacted)",
    "warm (compacted)": "cold (compacted)",
    "cold (loop-compacted)": "cold (loop-compacted)",
    "warm (loop-compacted)": "cold (loop-compacted)",
    "warm y0 (loop-compacted)": "cold (loop-compacted)",
    "cold (rounds)": "cold (rounds)",
    "warm safeguarded (rounds)": "cold (rounds)",
}


def time_variants(args: Args, test_fam, x, model, target: float) -> dict:
    """Every cold / warm Sinkhorn variant to L1 marginal error ``target``, each its own timed solve (warm-up +
    median of ``--repeats``): ``{row name: Timing}``."""
    cold_model = ZeroPotential(test_fam.n)

    # every Sinkhorn here uses the study's relaxation; the loop compacts only in the rows that say so
    def sinkhorn(**kw):
        return Sinkhorn(relaxation=args.relaxation, **{"loop_compact_below": 0.0, **kw})

    refiners = {
        "": sinkhorn(),  # one batched loop: every instance steps until the slowest reaches the target
        " (compacted)": sinkhorn(skip_tol=target),  # finished instances skipped by the solver's step
        " (loop-compacted)": sinkhorn(loop_compact_below=0.85),  # the loop gathers the unfinished ones
    }
    methods = {}
    for suffix, refiner in refiners.items():
        methods["cold" + suffix] = refiner
        methods["warm" + suffix] = SemiAmortized(model, refiner, steps=args.max_steps)
    # compaction rounds (Safeguarded, fallback in rounds on the still-uncertified instances)
    guards = {
        name: Safeguarded(
            FullyAmortized(start),
            MarginalError(),
            sinkhorn(),
            tol=target,
            fallback_steps=args.max_steps,
            round_steps=args.round_steps,
        )
        for name, start in (("cold (rounds)", cold_model), ("warm safeguarded (rounds)", model))
    }
    timings = {}
    with torch.no_grad():
        for name, solver in methods.items():
            timings[name] = time_call(
                lambda s=solver, t=target, fam=test_fam, x=x: do.solve(
                    fam, s, x, tol=t, max_steps=args.max_steps + 2, throw=False
                ),
                repeats=args.repeats,
            )
        for name, guard in guards.items():
            timings[name] = time_call(lambda g=guard, fam=test_fam, x=x: g.solve(fam, x), repeats=args.repeats)
        # the prediction passed as Sinkhorn's y0 (timed together): the same iterates as "warm
        # (loop-compacted)" without SemiAmortized's wrapper state in the loop
        timings["warm y0 (loop-compacted)"] = time_call(
            lambda t=target, fam=test_fam, x=x, m=model: do.solve(
                fam,
                sinkhorn(loop_compact_below=0.85),
                x,
                y0=m(x),
                tol=t,
                max_steps=args.max_steps,
                throw=False,
            ),
            repeats=args.repeats,
        )
    return timings


def target_rows(args: Args, task: str, test_fam, x, model, target: float, train_time: float, report: Report):
    """Every cold / warm variant to L1 marginal error ``target`` (each its own timed solve), then the POT
    comparison on POT's criterion: one row each."""
    B = x.a.shape[0]
    timings = time_variants(args, test_fam, x, model, target)
    pot_rows = pot_comparison(args, test_fam, x, model, target)
    per_inst = {name: tm.median / B for name, tm in timings.items()}
    for name, tm in timings.items():
        sol = tm.result
        pred_step = not (name.startswith("cold") and "rounds" not in name) and "y0" not in name
        steps = sol.num_steps.float() - (1 if pred_step else 0)
        # (minus the prediction step: warm rows, and the rounds rows' zero-potential "prediction")
        report.add_row(
            task=task,
            target=target,
            method=name,
            stop=f"L1 marginal error <= {target:g}",
            pairs=B,
            ms_per_inst=1e3 * per_inst[name],
            speedup_vs_cold=per_inst[COLD_ROW[name]] / per_inst[name],
            vs_pot=float("nan"),  # another stopping rule than POT's: no ratio
            iters_median=float(steps.median()),
            iters_max=float(steps.max()),
            certified=f"{int(sol.successful.sum())}/{B}",
            max_marginal_err=float(test_fam.marginal_error(sol.y, x).max()),
            max_marginal_err_l2=float(marginal_error_l2(test_fam, sol.y, x).max()),
            break_even_instances=break_even(train_time, per_inst[COLD_ROW[name]], per_inst[name])
            if name.startswith("warm")
            else float("nan"),
        )
    for row in pot_rows:
        report.add_row(task=task, target=target, **row)
    for r in report.rows[-(len(timings) + len(pot_rows)) :]:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})


def plot_task(args: Args, axes, ti: int, task: str, test_fam, x, model, report: Report) -> None:
    """The task's two panels: convergence from cold and warm starts, and time per instance by method."""
    B = x.a.shape[0]
    with torch.no_grad():
        cold_curve = error_curve(test_fam, x, test_fam.init(x), args.curve_steps, args.relaxation)
        warm_curve = error_curve(test_fam, x, model(x), args.curve_steps, args.relaxation)
    ax = axes[2 * ti]
    ax.semilogy(cold_curve, label="cold (f = 0)")
    ax.semilogy(warm_curve, label="warm (Meta OT prediction)")
    for t in args.targets:
        ax.axhline(t, color="gray", lw=0.5, ls="--")
    ax.set_xlabel("Sinkhorn iteration")
    ax.set_ylabel("median L1 marginal error")
    ax.set_title(f"{task}: convergence, {B} held-out pairs", fontsize=10)
    ax.legend()
    ax = axes[2 * ti + 1]
    rows = [r for r in report.rows if r["task"] == task]
    names = list(dict.fromkeys(r["method"] for r in rows))
    idx = np.arange(len(args.targets))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        vals = [next(r["ms_per_inst"] for r in rows if r["method"] == name and r["target"] == t) for t in args.targets]
        ax.bar(idx + width * (k - (len(names) - 1) / 2), vals, width=width, label=name)
    ax.set_xticks(idx, [f"err {t:g}" for t in args.targets])
    ax.set_yscale("log")
    ax.set_ylabel("ms per instance")
    ax.set_title(f"{task}: time to marginal error", fontsize=10)
    ax.legend(fontsize=8)


def main(argv=None):
    args = parse_args(Args, argv)
    require("ot", POT)  # the baseline first: if it is missing, the study stops before training
    if args.quick:
        args.train_steps, args.n_test, args.pot_pairs, args.hidden, args.targets = 20, 16, 4, 32, (1e-2,)
        args.curve_steps, args.repeats, args.batch_size = 20, 1, 16
        args.regression_pairs, args.unrolled_sinkhorn = 64, min(args.unrolled_sinkhorn, 3)
    set_threads(args.threads)
    seed_all(args.seed)  # the derived seeds (training phases, held-out pairs): see Args
    started = conditions(
        dtype="float64",
        batch=args.n_test,
        compared=(
            "every row: warm-up + median of repeats, same threads (torch and NumPy/BLAS), same process; "
            "vs_pot only on the rows stopped on POT's criterion (L2 marginal error <= target/sqrt(m)), "
            "on the same pairs, plain steps; the other rows stop on L1 marginal error <= target"
        ),
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = Report("meta_ot", out_dir=args.out)
    fig, axes = plt.subplots(1, 2 * len(args.tasks), figsize=(11 * len(args.tasks), 4.5), layout="constrained")
    summary = {}
    for ti, task in enumerate(args.tasks):
        # ---- ours: train the potential network; then every row on the held-out pairs, POT's last ----
        train_fam = make_family(task, "train", args.eps)
        test_fam = make_family(task, "test", args.eps)
        model, summary[task] = train_task(args, task, train_fam, test_fam)
        x = test_fam.sample(args.n_test, seed=args.seed + 12345)
        with torch.no_grad():
            pred_err = test_fam.marginal_error(model(x), x)
        summary[task]["prediction_marginal_error_median"] = float(pred_err.median())
        for target in args.targets:
            target_rows(args, task, test_fam, x, model, target, summary[task]["train_time_s"], report)
        plot_task(args, axes, ti, task, test_fam, x, model, report)

    # ---- report ----
    print(report.table())
    path = report.save({"args": vars(args), "conditions": started, "summary": summary}, fig)
    print(f"wrote {path}")
    return report.rows


if __name__ == "__main__":
    main()
