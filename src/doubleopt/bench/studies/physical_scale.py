"""Physical learning at scale: time per coupled-learning step vs network size (1k ... 10^6 nodes, 2D Delaunay
networks), per factorization backend, against a fair loop baseline; and coupled learning on a 10^5-node network.

One step = the free state and the clamped state of every example of the batch, plus the conductance update
(``doubleopt.physical.learning_step``, ``CoupledLearning``). Every row computes the same update (checked:
``max_rel_diff`` against the baseline), in float64, with the same ``--threads`` for torch, SciPy / BLAS and MKL, in
one process. Every row is timed the same way: ``--warmup`` untimed steps, then the median of ``--repeats`` steps
(``--slow-repeats`` and no warm-up for the SuperLU rows from ``--slow-from`` nodes on, where one step takes tens of
seconds); every step refactorizes for its conductances.

* doubleopt, BACKEND: the network's symbolic analysis (ordering, elimination tree) is done once, before timing
  (cached on the network: the pattern never changes while learning); each step refactorizes numerically and
  solves all its right-hand sides in one call per state: the free states (by superposition when the batch is
  larger than the fixed nodes) and the clamped states through the output responses Z = L^-1 M^T (a Schur
  complement on the few outputs, from the same factorization). Backends: ``pardiso`` (MKL PARDISO, extra
  ``doubleopt[pardiso]``), ``qdldl`` (the light default), ``splu`` (SuperLU, ordering computed once).
* doubleopt before: the same step with SuperLU factorizing from scratch each step (minimum degree every step):
  doubleopt's step before the analysis cache. ``speedup_vs_before`` is its time over the row's.
* baseline (the headline ratio, ``speedup_vs_baseline``): a plain SciPy step that factorizes its two systems
  once per step (``splu`` with doubleopt's ordering and options; free nodes, and free nodes with the outputs as
  extra Dirichlet nodes for the clamped state) and reuses each for every example (each system's right-hand sides
  in one multi-right-hand-side solve): ``doubleopt.bench.studies.physical.factorized_step``.

The learning study trains a ``--learn-nodes``-node network on a linear regression task (``regression_task``) by
coupled learning with the ``auto`` backend and records the training cost before each step against the step and
the wall time (analysis included).

Run: ``doubleopt bench physical_scale`` (full: up to 10^6 nodes) or ``doubleopt bench physical_scale -- --quick``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

import doubleopt.physical as ph
from doubleopt.bench import Report, conditions, parse_args, set_threads, time_call
from doubleopt.bench.studies.physical import SPLU_OPTIONS, factorized_step
from doubleopt.physical import _factor


@dataclass
class Args:
    """Time per coupled-learning step vs network size per factorization backend, against a plain step that
    factorizes its two systems once per step; coupled learning on a large network (cost vs step and wall time)."""

    sizes: list[int] = field(default_factory=lambda: [1000, 4000, 16000, 64000, 256000, 1000000])  # nodes
    dim: int = 2  # 2D or 3D Delaunay networks (every Delaunay edge)
    batches: list[int] = field(default_factory=lambda: [1, 32])  # examples per learning step
    backends: list[str] = field(default_factory=lambda: ["pardiso", "qdldl", "splu"])  # those not installed: skipped
    n_inputs: int = 4  # voltage sources
    n_outputs: int = 4  # output nodes
    eta: float = 0.1  # coupled-learning clamping strength
    lr: float = 0.05  # learning rate of the timed steps
    warmup: int = 1  # untimed steps before timing (all rows)
    repeats: int = 5  # timed steps (median reported)
    slow_from: int = 256000  # from this many nodes the SuperLU rows (before, baseline, splu) run slow_repeats steps
    slow_repeats: int = 1  # timed steps of the SuperLU rows at sizes >= slow_from (no warm-up there)
    learn_nodes: int = 100000  # nodes of the coupled-learning run
    learn_steps: int = 200  # its steps (full batch of learn_train examples)
    learn_train: int = 32  # its training examples
    learn_lr: float = 30.0  # its learning rate (larger networks need larger steps: drops per edge shrink)
    threads: int = 2  # torch / BLAS / MKL threads
    seed: int = 0  # network and data seed
    quick: bool = False  # smoke run under a minute: sizes 1k-16k, 10k-node learning run of 20 steps
    out: str = "bench_results/physical_scale"  # output folder


BEFORE = "doubleopt before: SuperLU from scratch each step"
BASELINE = "baseline: plain step, 2 splu per step, all examples as multi-RHS"


def before_step(net: ph.ResistorNetwork, k, x, t, rule, lr) -> np.ndarray:
    """doubleopt's step before the analysis cache: SuperLU from scratch (minimum degree) for this step's k."""
    f = ph.LaplacianFactor(net, k, reference=True)
    st = f.free(x, t)
    return np.clip(k - lr * rule.estimate(f, st), net.k_min, net.k_max)


# ---- the methods timed: every one returns the step's new conductances (or its StepResult) ----------------------
def methods(args: Args, net: ph.ResistorNetwork, k, x, t, backends: list[str]) -> dict:
    """Row label -> (step function, backend label)."""
    rule = ph.CoupledLearning(eta=args.eta)
    fns = {f"doubleopt, {b}": (lambda b=b: ph.learning_step(net, x, t, rule, args.lr, k=k, backend=b), b)
           for b in backends}
    fns[BEFORE] = (lambda: before_step(net, k, x, t, rule, args.lr), "splu-reference")
    fns[BASELINE] = (lambda: factorized_step(net, k, x, t, args.eta, args.lr), "splu (2 per step)")
    return fns


# ---- harness: one row per size, batch and method ---------------------------------------------------------------
def time_size(args: Args, n: int, backends: list[str], report: Report) -> None:
    t0 = time.perf_counter()
    net = ph.random_network(n, None, n_inputs=args.n_inputs, n_outputs=args.n_outputs, seed=args.seed,
                            k_init="uniform", dim=args.dim)
    build_s = time.perf_counter() - t0
    k = net.k.copy()
    analysis_s = {}
    for b in backends:  # the symbolic analysis, once per network and backend (not part of a step)
        t0 = time.perf_counter()
        net.solver(b).analysis()
        analysis_s[b] = time.perf_counter() - t0
    slow = n >= args.slow_from
    for B in args.batches:
        rng = np.random.default_rng(args.seed + B)
        x, t = rng.random((B, args.n_inputs)), 0.5 * rng.random((B, args.n_outputs))
        fns = methods(args, net, k, x, t, backends)
        timings = {}
        for name, (fn, _) in fns.items():
            superlu = name in (BEFORE, BASELINE, "doubleopt, splu")
            warm, reps = (0, args.slow_repeats) if slow and superlu else (args.warmup, args.repeats)
            timings[name] = time_call(fn, warmup=warm, repeats=reps)
        base = timings[BASELINE]
        scale = np.abs(base.result - k).max()
        for name, tm in timings.items():
            res = tm.result
            stats = res.stats if isinstance(res, ph.StepResult) else None
            new_k = res.k if stats is not None else res
            report.add_row(
                nodes=n, edges=net.n_edges, dim=args.dim, batch=B, method=name, backend=fns[name][1],
                ms_per_step=1e3 * tm.median,
                speedup_vs_baseline=base.median / tm.median,
                speedup_vs_before=timings[BEFORE].median / tm.median,
                repeats=len(tm.times),
                max_rel_diff=float(np.abs(new_k - base.result).max() / scale),
                factor_mb=stats.factor_bytes / 2**20 if stats else float("nan"),
                peak_rss_mb=(stats.peak_rss_bytes or float("nan")) / 2**20 if stats else float("nan"),
                analysis_s=analysis_s.get(fns[name][1], float("nan")),
                build_s=build_s,
            )
            print({kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in report.rows[-1].items()},
                  flush=True)


def learning_run(args: Args) -> dict:
    """Coupled learning on a large network (regression task), full batch: cost before each step vs step and
    wall time (the first step includes the symbolic analysis)."""
    task = ph.regression_task(args.learn_nodes, args.n_inputs, args.n_outputs, n_train=args.learn_train,
                              n_test=64, mean_degree=None, seed=args.seed)
    net, rule = task.network, ph.CoupledLearning(eta=args.eta)
    k, costs, walls = net.k.copy(), [], []
    t0 = time.perf_counter()
    for _ in range(args.learn_steps):
        out = ph.learning_step(net, task.x_train, task.t_train, rule, args.learn_lr, k=k)
        k = out.k
        costs.append(out.cost)
        walls.append(time.perf_counter() - t0)
    final = net.cost(task.x_train, task.t_train, k)
    return {
        "nodes": args.learn_nodes, "edges": net.n_edges, "steps": args.learn_steps, "lr": args.learn_lr,
        "backend": out.stats.backend, "cost": costs + [final], "wall_s": [0.0] + walls,
        "test_cost_init": net.cost(task.x_test, task.t_test), "test_cost_final": net.cost(task.x_test, task.t_test, k),
        "peak_rss_mb": (out.stats.peak_rss_bytes or float("nan")) / 2**20,
    }


def plot(args: Args, report: Report, learn: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.batches) + 1, figsize=(5 * (len(args.batches) + 1), 4))
    methods = list(dict.fromkeys(r["method"] for r in report.rows))
    for ax, B in zip(axes, args.batches):
        for m in methods:
            rows = [r for r in report.rows if r["method"] == m and r["batch"] == B]
            style = ":" if m in (BEFORE, BASELINE) else "-"
            ax.loglog([r["nodes"] for r in rows], [r["ms_per_step"] / 1e3 for r in rows], "o" + style, label=m)
        ax.set_xlabel("nodes")
        ax.set_ylabel("seconds per learning step")
        ax.set_title(f"batch {B}, {args.dim}D Delaunay, {args.threads} threads", fontsize=10)
        ax.legend(fontsize=7)
    ax = axes[-1]
    ax.semilogy(learn["wall_s"], learn["cost"], "-")
    ax.set_xlabel("wall time (s), symbolic analysis included")
    ax.set_ylabel("training cost")
    ax.set_title(f"coupled learning, {learn['nodes']} nodes, {learn['steps']} steps ({learn['backend']})",
                 fontsize=10)
    return fig


def main(argv=None):
    args = parse_args(Args, argv)
    if args.quick:
        args.sizes, args.repeats, args.learn_nodes, args.learn_steps = [1000, 4000, 16000], 2, 10000, 20
    set_threads(args.threads)
    backends = [b for b in args.backends if _factor.installed(b)]
    skipped = [b for b in args.backends if b not in backends]
    report = Report("physical_scale", out_dir=args.out)
    cond = conditions(dtype="float64", splu_options=SPLU_OPTIONS, backends=backends, skipped_not_installed=skipped,
                      compared="same update (max_rel_diff vs the baseline), float64, same threads for torch, "
                               "SciPy/BLAS and MKL, same process; warm-up + median for every row (SuperLU rows from "
                               "slow_from nodes: no warm-up, slow_repeats steps); every step refactorizes")
    for n in args.sizes:
        time_size(args, n, backends, report)
    learn = learning_run(args)
    path = report.save({"args": vars(args), "conditions": cond, "learning": learn}, plot(args, report, learn))
    print(report.table())
    print(f"coupled learning, {learn['nodes']} nodes: cost {learn['cost'][0]:.3g} -> {learn['cost'][-1]:.3g} in "
          f"{learn['steps']} steps, {learn['wall_s'][-1]:.1f} s; results in {path}")
    return report


if __name__ == "__main__":
    main()
