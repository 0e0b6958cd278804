"""Time per coupled-learning step on resistor networks of 1k / 4k / 16k nodes, batch of 64 samples.

One step = one free state + one clamped state for every sample, plus the conductance update. Every row
computes the same update (checked: ``max_rel_diff`` against the naive loop), in float64, with the same
``--threads`` for torch and SciPy / BLAS, on the same machine in the same process. Every row is timed the
same way: one untimed warm-up step, then the median of repeated steps; each step starts cold (nothing is
reused across steps: every factorization is recomputed for the step's conductances).

* doubleopt: one numeric factorization of the reduced Laplacian per step with ``--backend`` (default ``auto``:
  MKL PARDISO when ``doubleopt[pardiso]`` is installed and the network has 12k free nodes or more, else QDLDL;
  ``splu``: SuperLU, symmetric mode, minimum-degree ordering on L + L^T computed once); the symbolic analysis
  is cached on the network (done in the warm-up step, as in a learning run). The factorization is reused
  for every solve: the free states by superposition (the physics is linear in the imposed voltages:
  p = n_inputs + n_ground unit responses instead of 64 solves) and the clamped states (Lagrange multipliers
  through the m output responses Z = L^-1 M^T); the update is formed in low-rank form
  (`doubleopt.physical.learning_step`). The ``backend`` column names the backend that ran.
* doubleopt without superposition: the same factorization, 64 right-hand sides.
* baseline (the headline ratio): a plain SciPy step that factorizes once per step (``splu`` with the same
  ordering and options as ours) the two systems a textbook implementation needs (free nodes; free nodes with
  the outputs as extra Dirichlet nodes for the clamped state) and solves all examples with them (each
  system's 64 right-hand sides in one multi-right-hand-side solve).
* naive (spsolve per example), a secondary row: the same plain step calling ``scipy.sparse.linalg.spsolve``
  for every solve, i.e. two factorizations per example (2 x 64 per step, SciPy's default COLAMD ordering).

``speedup_vs_baseline`` is the baseline's time over the row's time (the doubleopt row: the headline ratio).
Run: `doubleopt bench physical [-- --quick]`.
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
    """Time per coupled-learning step: doubleopt (one factorization per step) vs a plain step that factorizes
    its two systems once per step (the headline baseline) and a naive spsolve-per-example loop."""

    sizes: list[int] = field(default_factory=lambda: [1000, 4000, 16000])  # network sizes (nodes)
    mean_degree: float = 4.0  # mean node degree of the planar random networks
    batch: int = 64  # input samples per learning step
    n_inputs: int = 4  # voltage sources
    n_outputs: int = 4  # output nodes
    eta: float = 0.1  # coupled-learning clamping strength
    lr: float = 0.05  # learning rate alpha
    repeats: int = 10  # timed repeats (median reported) of the doubleopt steps and the factorize-once baseline
    baseline_repeats: int = 3  # timed repeats of the (slow) naive spsolve-per-example step
    threads: int = 2  # torch / BLAS threads
    seed: int = 0  # network and data seed
    backend: str = "auto"  # doubleopt's factorization backend: auto, pardiso, qdldl or splu
    quick: bool = False  # seconds-long smoke run (small sizes, batch 16)
    out: str = "bench_results/physical"  # output folder


# SuperLU options of doubleopt's factorization (doubleopt.physical's LaplacianFactor), used by the baseline too
SPLU_OPTIONS = {"permc_spec": "MMD_AT_PLUS_A", "diag_pivot_thresh": 0.0, "options": {"SymmetricMode": True}}


def _plain_systems(net: ph.ResistorNetwork, k: np.ndarray):
    """The two systems of a plain coupled-learning step, assembled once per step: free nodes (sources and
    ground fixed), and free nodes with the output nodes as extra Dirichlet nodes (the clamped state)."""
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
    return out_nodes, (fixed, free, A, Ab), (fixed_c, free_c, Ac, Acb)


def _plain_update(net, k, VF, VC, eta, lr, B):
    e = net.edges
    dF, dC = VF[:, e[:, 0]] - VF[:, e[:, 1]], VC[:, e[:, 0]] - VC[:, e[:, 1]]
    upd = ((dC**2 - dF**2) / eta).sum(0)
    return np.clip(k - lr * upd / B, net.k_min, net.k_max)


def factorized_step(
    net: ph.ResistorNetwork, k: np.ndarray, x: np.ndarray, t: np.ndarray, eta: float, lr: float
):
    """Plain coupled-learning step, factorizing once per step: one ``splu`` of the free system and one of the
    clamped system (doubleopt's ordering and options), then all ``B`` free states as one multi-right-hand-side
    solve and all ``B`` clamped states as another."""
    out_nodes, (fixed, free, A, Ab), (fixed_c, free_c, Ac, Acb) = _plain_systems(net, k)
    B, n = x.shape[0], net.n_nodes
    lu, lu_c = spla.splu(A, **SPLU_OPTIONS), spla.splu(Ac, **SPLU_OPTIONS)
    VF = np.empty((B, n))
    VF[:, fixed] = np.c_[x, np.zeros((B, len(net.ground)))]
    VF[:, free] = lu.solve(np.asarray(-(Ab @ VF[:, fixed].T))).T
    oF = VF[:, out_nodes]
    VC = np.empty((B, n))
    VC[:, fixed_c] = np.c_[VF[:, fixed], oF + eta * (t - oF)]
    VC[:, free_c] = lu_c.solve(np.asarray(-(Acb @ VC[:, fixed_c].T))).T
    return _plain_update(net, k, VF, VC, eta, lr, B)


def naive_step(
    net: ph.ResistorNetwork, k: np.ndarray, x: np.ndarray, t: np.ndarray, eta: float, lr: float
):
    """Naive coupled-learning step: the same systems, one ``spsolve`` (a fresh factorization, SciPy's default
    COLAMD ordering) per free and per clamped solve of every example."""
    out_nodes, (fixed, free, A, Ab), (fixed_c, free_c, Ac, Acb) = _plain_systems(net, k)
    B, n = x.shape[0], net.n_nodes
    gnd = np.zeros(len(net.ground))
    VF, VC = np.empty((B, n)), np.empty((B, n))
    for b in range(B):
        VF[b, fixed] = np.r_[x[b], gnd]
        VF[b, free] = spla.spsolve(A, -Ab @ VF[b, fixed])
        oF = VF[b, out_nodes]
        VC[b, fixed_c] = np.r_[x[b], gnd, oF + eta * (t[b] - oF)]
        VC[b, free_c] = spla.spsolve(Ac, -Acb @ VC[b, fixed_c])
    return _plain_update(net, k, VF, VC, eta, lr, B)


METHODS = {  # row label -> factorizations per step (B = batch)
    "doubleopt (1 LU per step, superposition)": "1",
    "doubleopt, no superposition (1 LU per step, B right-hand sides)": "1",
    "baseline: plain step, factorize once per step (2 splu, same ordering)": "2",
    "naive (spsolve per example)": "2B",
}


def time_sizes(args, rule, report: Report) -> None:
    """One row per size and method: median ms per step after a warm-up, the ratio to the baseline."""
    ours_name, direct_name, base_name, naive_name = METHODS
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
        fns = {
            ours_name: lambda net=net, k=k, x=x, t=t: ph.learning_step(
                net, x, t, rule, args.lr, k=k, backend=args.backend
            ).k,
            direct_name: lambda net=net, k=k, x=x, t=t: ph.learning_step(
                net, x, t, rule, args.lr, k=k, superpose=False, backend=args.backend
            ).k,
            base_name: lambda net=net, k=k, x=x, t=t: factorized_step(net, k, x, t, args.eta, args.lr),
            naive_name: lambda net=net, k=k, x=x, t=t: naive_step(net, k, x, t, args.eta, args.lr),
        }
        timings = {
            name: time_call(fn, warmup=1, repeats=args.baseline_repeats if name == naive_name else args.repeats)
            for name, fn in fns.items()
        }
        ref = timings[naive_name].result
        scale = np.abs(ref - k).max()
        t0 = time.perf_counter()
        net.factorize(k)
        fact = time.perf_counter() - t0
        for name, tm in timings.items():
            report.add_row(
                nodes=n,
                edges=net.n_edges,
                batch=args.batch,
                method=name,
                backend=net.solver(args.backend).backend if name in (ours_name, direct_name) else "splu",
                factorizations_per_step=METHODS[name],
                ms_per_step=1e3 * tm.median,
                speedup_vs_baseline=timings[base_name].median / tm.median,
                repeats=len(tm.times),
                max_rel_diff=float(np.abs(tm.result - ref).max() / scale),
                factorize_ms=1e3 * fact if name == ours_name else float("nan"),
            )
            print(report.rows[-1], flush=True)


def main(argv=None):
    args = parse_args(Args, argv)
    if args.quick:
        args.sizes, args.batch, args.repeats, args.baseline_repeats = [300, 1000], 16, 2, 1
    set_threads(args.threads)
    report = Report("physical", out_dir=args.out)
    rule = ph.CoupledLearning(eta=args.eta)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    time_sizes(args, rule, report)
    ours_name, direct_name, base_name, naive_name = METHODS
    ns = np.array(args.sizes, dtype=float)

    def series(name):
        return np.array([r["ms_per_step"] for r in report.rows if r["method"] == name])

    ours_t, base_t = series(ours_name), series(base_name)
    slope = float(np.polyfit(np.log(ns), np.log(ours_t), 1)[0]) if len(ns) > 1 else float("nan")
    slope_b = float(np.polyfit(np.log(ns), np.log(base_t), 1)[0]) if len(ns) > 1 else float("nan")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(ns, series(naive_name), "x:", color="gray", label="naive: spsolve per example (2B LUs)")
    ax.loglog(ns, base_t, "o-", label=f"baseline: 2 LUs per step, same ordering (slope {slope_b:.2f})")
    ax.loglog(ns, series(direct_name), "^--", label=f"doubleopt, {args.batch} RHS (no superposition)")
    ax.loglog(ns, ours_t, "s-", label=f"doubleopt, 1 LU per step (slope {slope:.2f})")
    for nn, a, b in zip(ns, ours_t, base_t):
        ax.annotate(f"{b / a:.1f}x", (nn, a), textcoords="offset points", xytext=(4, -12))
    ax.axhline(60, color="gray", ls=":", lw=1, label="60 ms goal (4k)")
    ax.set_xlabel("nodes")
    ax.set_ylabel(f"ms per coupled-learning step (batch {args.batch})")
    ax.set_title(f"Resistor network learning step, float64, {args.threads} threads", fontsize=10)
    ax.legend(fontsize=7)
    path = report.save(
        {
            "args": vars(args),
            "conditions": conditions(
                load_avg_1min=load,
                dtype="float64",
                compared=(
                    "same update (max_rel_diff), float64, same threads for torch and SciPy/BLAS, same process; "
                    "warm-up + median of repeats for every row; every step refactorizes (cold across steps); "
                    "the baseline uses doubleopt's SuperLU ordering and options"
                ),
                splu_options=SPLU_OPTIONS,
            ),
            "headline_speedup_vs_baseline": {
                int(r["nodes"]): r["speedup_vs_baseline"] for r in report.rows if r["method"] == ours_name
            },
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
