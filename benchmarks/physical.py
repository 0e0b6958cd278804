"""Time per coupled-learning step on resistor networks of 1k / 4k / 16k nodes, batch of 64 samples.

One step = one free state + one clamped state for every sample, plus the conductance update.

* doubleopt: one sparse LU of the reduced Laplacian per step (SuperLU, symmetric mode, minimum degree on
  L + L^T), reused for every solve: the free states by superposition (the physics is linear in the imposed
  voltages: p = n_inputs + n_ground unit responses instead of 64 solves) and the clamped states (Lagrange
  multipliers through the m output responses Z = L^-1 M^T); the update is formed in low-rank form
  (`doubleopt.physical.learning_step`).
* doubleopt without superposition (column `no_superpose_ms`): the same factorization, 64 right-hand sides.
* baseline (same run): a plain loop that calls `scipy.sparse.linalg.spsolve` for every solve, i.e. 64 free
  solves and 64 clamped solves (outputs as extra Dirichlet nodes), the matrices assembled once per step.

Both compute the same update (checked: `max_rel_diff`). Run: `doubleopt bench physical [-- --quick]`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import doubleopt.physical as ph
from doubleopt.bench import Report, conditions, parse_args, set_threads, time_call


@dataclass
class Args:
    """Time per coupled-learning step: doubleopt (one factorization per step) vs a spsolve-per-solve loop."""

    sizes: list[int] = field(default_factory=lambda: [1000, 4000, 16000])  # network sizes (nodes)
    mean_degree: float = 4.0  # mean node degree of the planar random networks
    batch: int = 64  # input samples per learning step
    n_inputs: int = 4  # voltage sources
    n_outputs: int = 4  # output nodes
    eta: float = 0.1  # coupled-learning clamping strength
    lr: float = 0.05  # learning rate alpha
    repeats: int = 10  # timed repeats of the doubleopt step (median reported)
    baseline_repeats: int = 3  # timed repeats of the (slow) baseline step
    threads: int = 2  # torch / BLAS threads
    seed: int = 0  # network and data seed
    quick: bool = False  # seconds-long smoke run (small sizes, batch 16)
    out: str = "bench_results/physical"  # output folder


def baseline_step(
    net: ph.ResistorNetwork, k: np.ndarray, x: np.ndarray, t: np.ndarray, eta: float, lr: float
):
    """Plain coupled-learning step: assemble matrices once, then one spsolve per free / clamped solve."""
    n, e = net.n_nodes, net.edges
    E = len(e)
    D = sp.csr_matrix(
        (np.r_[np.ones(E), -np.ones(E)], (np.r_[np.arange(E), np.arange(E)], np.r_[e[:, 0], e[:, 1]])),
        shape=(E, n),
    )
    L = (D.T @ sp.diags(k) @ D).tocsr()
    out_nodes = net.output_pairs[:, 0]
    fixed = np.r_[net.sources, net.ground]
    free = np.setdiff1d(np.arange(n), fixed)
    fixed_c = np.r_[fixed, out_nodes]
    free_c = np.setdiff1d(np.arange(n), fixed_c)
    A, Ab = L[free][:, free].tocsc(), L[free][:, fixed]
    Ac, Acb = L[free_c][:, free_c].tocsc(), L[free_c][:, fixed_c]
    gnd = np.zeros(len(net.ground))
    upd = np.zeros(E)
    for b in range(x.shape[0]):
        VF = np.empty(n)
        VF[fixed] = np.r_[x[b], gnd]
        VF[free] = spla.spsolve(A, -Ab @ VF[fixed])
        oF = VF[out_nodes]
        VC = np.empty(n)
        VC[fixed_c] = np.r_[x[b], gnd, oF + eta * (t[b] - oF)]
        VC[free_c] = spla.spsolve(Ac, -Acb @ VC[fixed_c])
        dF, dC = VF[e[:, 0]] - VF[e[:, 1]], VC[e[:, 0]] - VC[e[:, 1]]
        upd += (dC**2 - dF**2) / eta
    return np.clip(k - lr * upd / x.shape[0], net.k_min, net.k_max)


def main(argv=None):
    args = parse_args(Args, argv)
    if args.quick:
        args.sizes, args.batch, args.repeats, args.baseline_repeats = [300, 1000], 16, 2, 1
    set_threads(args.threads)
    report = Report("physical", out_dir=args.out)
    rule = ph.CoupledLearning(eta=args.eta)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for n in args.sizes:
        net = ph.random_network(
            n,
            args.mean_degree,
            n_inputs=args.n_inputs,
            n_outputs=args.n_outputs,
            seed=args.seed,
            k_init="uniform",
        )
        rng = np.random.default_rng(args.seed)
        x = rng.random((args.batch, args.n_inputs))
        t = 0.5 * rng.random((args.batch, args.n_outputs))
        k = net.k.copy()

        def ours_fn(net=net, k=k, x=x, t=t):
            return ph.learning_step(net, x, t, rule, args.lr, k=k).k

        def direct_fn(net=net, k=k, x=x, t=t):
            return ph.learning_step(net, x, t, rule, args.lr, k=k, superpose=False).k

        def base_fn(net=net, k=k, x=x, t=t):
            return baseline_step(net, k, x, t, args.eta, args.lr)

        ours = time_call(ours_fn, warmup=1, repeats=args.repeats)
        direct = time_call(direct_fn, warmup=1, repeats=args.repeats)
        base = time_call(base_fn, warmup=1, repeats=args.baseline_repeats)
        diff = np.abs(ours.result - base.result).max() / np.abs(base.result - k).max()
        t0 = time.perf_counter()
        net.factorize(k)
        fact = time.perf_counter() - t0
        report.add_row(
            nodes=n,
            edges=net.n_edges,
            batch=args.batch,
            doubleopt_ms=1e3 * ours.median,
            no_superpose_ms=1e3 * direct.median,
            baseline_ms=1e3 * base.median,
            speedup=base.median / ours.median,
            factorize_ms=1e3 * fact,
            max_rel_diff=float(diff),
        )
        print(report.rows[-1], flush=True)
    rows = report.rows
    ns = np.array([r["nodes"] for r in rows], dtype=float)
    ours_t = np.array([r["doubleopt_ms"] for r in rows])
    base_t = np.array([r["baseline_ms"] for r in rows])
    slope = float(np.polyfit(np.log(ns), np.log(ours_t), 1)[0]) if len(ns) > 1 else float("nan")
    slope_b = float(np.polyfit(np.log(ns), np.log(base_t), 1)[0]) if len(ns) > 1 else float("nan")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(ns, base_t, "o-", label=f"spsolve loop (slope {slope_b:.2f})")
    ax.loglog(ns, [r["no_superpose_ms"] for r in rows], "^--", label="doubleopt, 64 RHS (no superposition)")
    ax.loglog(ns, ours_t, "s-", label=f"doubleopt, one factorization (slope {slope:.2f})")
    for nn, a, b in zip(ns, ours_t, base_t):
        ax.annotate(f"{b / a:.0f}x", (nn, a), textcoords="offset points", xytext=(4, -12))
    ax.axhline(60, color="gray", ls=":", lw=1, label="60 ms goal (4k)")
    ax.set_xlabel("nodes")
    ax.set_ylabel(f"ms per coupled-learning step (batch {args.batch})")
    ax.set_title("Resistor network learning step")
    ax.legend(fontsize=8)
    path = report.save(
        {
            "args": vars(args),
            "conditions": conditions(load_avg_1min=load, dtype="float64"),
            "scaling_exponent": slope,
            "baseline_scaling_exponent": slope_b,
        },
        fig,
    )
    print(report.table())
    print(f"time ~ n^{slope:.2f} (baseline n^{slope_b:.2f}); load average {load:.2f}; results in {path}")
    return report


if __name__ == "__main__":
    main()
