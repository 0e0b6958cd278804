"""Hessians of the physical and the learning landscapes of a resistor network, before and after training.

Physical Hessian: the reduced Laplacian L_ff (power w.r.t. free node voltages). Learning Hessian: the exact
Hessian of the cost w.r.t. the conductances (adjoint formula, checked against autograd in the tests), and its
Gauss-Newton part. The relation tested ("soft physical modes become stiff learning directions"): for each
physical mode u_i (L_ff u_i = lambda_i u_i) the conductance direction that changes its stiffness is
w_i = (D u_i)^2 (d lambda_i / d k); the learning stiffness along it is q_i = w_i^T H_C w_i / |w_i|^2.
The relation holds if q_i falls with lambda_i: Spearman rho(lambda, q) < 0, and a soft/stiff ratio of q >> 1.
Controls: the same network before training, and w_i with its edges shuffled.

Run: `doubleopt bench physical_hessian [-- --quick]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import doubleopt.physical as ph
from doubleopt.bench import Report, conditions, parse_args, seed_all, set_threads


@dataclass
class Args:
    """Physical vs learning Hessian spectra of resistor networks: are soft physical modes stiff learning directions?

    What is compared: for each network of ``--seeds`` (a regression task, ``--n-nodes`` nodes), the Spearman
    correlation between the physical stiffness lambda_i of each mode and the learning stiffness q_i along the
    conductance direction that changes it, after ``--steps`` full-batch steps of ``--rule`` (learning rate
    ``--lr``) against two controls on the same network: before training (the same initial conductances) and the
    direction's edges shuffled. Exact Hessians (adjoint formula) and their Gauss-Newton part, float64, dense
    eigendecompositions; no timings.

    Seeds: each seed of ``--seeds`` builds its network and data (``regression_task``) and the shuffled control
    (``mode_alignment``); training is full batch and deterministic; the global generators are seeded with the
    first seed (nothing draws from them).
    """

    n_nodes: int = 100  # network size (dense eigendecompositions: keep it small)
    n_inputs: int = 3  # voltage sources of the regression task
    n_outputs: int = 2  # output nodes
    n_train: int = 64  # training samples
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # networks / tasks
    rule: str = "coupled"  # training rule: coupled, ep or exact
    steps: int = 2000  # training steps
    lr: float = 30.0  # learning rate
    threads: int = 1  # torch / BLAS threads
    quick: bool = False  # seconds-long smoke run
    out: str = "bench_results/physical_hessian"  # output folder


RULES = {
    "coupled": ph.CoupledLearning(0.1),
    "ep": ph.EquilibriumPropagation(0.1),
    "exact": ph.ExactGradient(),
}


def analyse(args: Args, seed: int, rule) -> tuple[dict, list[dict]]:
    """Train the network of ``seed`` and compare the Hessians before and after: ``(row, spectra for the plot)``."""
    task = ph.regression_task(args.n_nodes, args.n_inputs, args.n_outputs, n_train=args.n_train, seed=seed)
    net, x, t = task.network, task.x_train, task.t_train
    res = ph.train(net, x, t, rule, steps=args.steps, lr=args.lr, eval_every=args.steps, progress=True)
    row = {"seed": seed, "cost_init": res.eval_cost[0], "cost_trained": res.eval_cost[-1]}
    curves = []
    for tag, k in (("init", net.k), ("trained", res.k)):
        H = ph.learning_hessian(net, x, t, k=k, method="exact")
        G = ph.learning_hessian(net, x, t, k=k)
        a = ph.mode_alignment(net, H, k=k, seed=seed)
        a_gn = ph.mode_alignment(net, G, k=k, seed=seed)
        ev = np.linalg.eigvalsh(H)
        row |= {
            f"rho_{tag}": a.spearman,
            f"soft_stiff_{tag}": a.soft_stiff_ratio,
            f"rho_shuffled_{tag}": a.shuffled_spearman,
            f"rho_gn_{tag}": a_gn.spearman,
            f"gn_rel_err_{tag}": float(np.abs(H - G).max() / np.abs(H).max()),
            f"lambda_min_{tag}": float(a.phys_eigvals[0]),
            f"n_stiff_learning_{tag}": int((ev > 1e-3 * ev[-1]).sum()),
        }
        curves.append({"seed": seed, "tag": tag, "phys": a.phys_eigvals, "q": a.q, "learn": ev})
    return row, curves


def verdict(rows: list[dict]) -> tuple[bool, str]:
    """Does the relation hold on every network (rho < -0.3, below the shuffled control, soft/stiff ratio > 3)?"""
    rho_t = np.array([r["rho_trained"] for r in rows])
    rho_i = np.array([r["rho_init"] for r in rows])
    rho_s = np.array([r["rho_shuffled_trained"] for r in rows])
    ratio_t = np.array([r["soft_stiff_trained"] for r in rows])
    holds = bool((rho_t < -0.3).all() and (rho_t < rho_s).all() and (ratio_t > 3).all())
    text = (
        f"{'HOLDS' if holds else 'DOES NOT HOLD'}: Spearman rho(lambda_phys, q_learn) trained "
        f"{rho_t.mean():+.2f} (range {rho_t.min():+.2f}..{rho_t.max():+.2f}) vs untrained "
        f"{rho_i.mean():+.2f} vs shuffled control {rho_s.mean():+.2f}; soft/stiff decile ratio of q trained "
        f"{np.median(ratio_t):.0f}x (median), untrained "
        f"{np.median([r['soft_stiff_init'] for r in rows]):.0f}x"
    )
    return holds, text


def plot(args: Args, rows: list[dict], curves: list[dict], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    c0 = [c for c in curves if c["seed"] == args.seeds[0]]
    for c in c0:
        ls = "-" if c["tag"] == "trained" else "--"
        ax[0].semilogy(c["phys"], ls, label=f"physical L_ff ({c['tag']})")
        lv = np.clip(np.sort(np.abs(c["learn"]))[::-1], 1e-18, None)
        ax[1].semilogy(lv, ls, label=f"learning |eig H_C| ({c['tag']})")
    ax[0].set_xlabel("mode index")
    ax[0].set_ylabel("eigenvalue")
    ax[0].set_title(f"physical spectrum (seed {args.seeds[0]})")
    ax[0].legend(fontsize=8)
    ax[1].set_xlabel("rank")
    ax[1].set_title("learning-Hessian spectrum (exact)")
    ax[1].legend(fontsize=8)
    for c in c0:
        ax[2].loglog(
            c["phys"],
            np.clip(c["q"], 1e-20, None),
            "o" if c["tag"] == "trained" else ".",
            alpha=0.7 if c["tag"] == "trained" else 0.4,
            label=c["tag"],
        )
    ax[2].set_xlabel("physical stiffness lambda_i")
    ax[2].set_ylabel("learning stiffness q_i along d lambda_i / dk")
    ax[2].set_title(f"rho trained {rows[0]['rho_trained']:+.2f}, init {rows[0]['rho_init']:+.2f}")
    ax[2].legend(fontsize=8)
    fig.suptitle(title, fontsize=8)
    return fig


def main(argv=None):
    args = parse_args(Args, argv)
    if args.quick:
        args.n_nodes, args.seeds, args.steps, args.n_train = 40, [0], 200, 16
    set_threads(args.threads)
    seed_all(args.seeds[0])  # every network's own randomness comes from its seed of --seeds: see Args
    started = conditions(dtype="float64")
    report = Report("physical_hessian", out_dir=args.out)
    rule = RULES[args.rule]
    curves = []
    for seed in args.seeds:
        row, spectra = analyse(args, seed, rule)
        curves += spectra
        report.add_row(**row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    holds, text = verdict(report.rows)
    path = report.save(
        {"args": vars(args), "conditions": started, "verdict": text, "holds": holds},
        plot(args, report.rows, curves, text),
    )
    print(report.table())
    print(text)
    print(f"results in {path}")
    return report


if __name__ == "__main__":
    main()
