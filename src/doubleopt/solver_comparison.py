"""The main job on built-in defaults: every solver on a default family, a table and a convergence plot."""

from __future__ import annotations

from pathlib import Path

import torch

from . import problems
from ._solve import solve
from .bench.report import Report
from .solvers import FISTA, GD, ISTA, LBFGS, Adagrad, Adam, Momentum, Nesterov, Newton, NonlinearCG, RMSProp


def default_solvers() -> dict[str, object]:
    return {
        "GD (Armijo)": GD(lr=1.0, line_search=True),
        "Momentum": Momentum(lr=0.5, momentum=0.9),
        "Nesterov": Nesterov(lr=0.5, momentum=0.9),
        "Adagrad": Adagrad(lr=0.5),
        "RMSProp": RMSProp(lr=0.01),
        "Adam": Adam(lr=0.05),
        "NonlinearCG": NonlinearCG(),
        "L-BFGS": LBFGS(),
        "Newton": Newton(),
        "ISTA": ISTA(),
        "FISTA": FISTA(),
    }


def run_demo(out_dir: str = "demo_results", quick: bool = False, batch: int = 256, seed: int = 0) -> list[dict]:
    """Solve B L2-regularized logistic-regression problems (float64) with every solver."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(seed)
    fam = problems.LogisticRegression(n_features=10, n_points=200, l2=1e-2, dtype=torch.float64)
    x = fam.sample(64 if quick else batch, seed=seed)
    best = solve(fam, Newton(), x, max_steps=100, tol=1e-12, throw=False).value
    report = Report("demo", out_dir=out_dir)
    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(12, 4.5))
    for a in (ax, ax_t):
        a.set_prop_cycle(color=plt.get_cmap("tab20").colors[::2] + plt.get_cmap("tab20").colors[1::2])
    print(f"doubleopt demo: {x.features.shape[0]} logistic-regression problems (d=10, N=200, float64), tol 1e-6\n")
    for name, solver in default_solvers().items():
        sol = solve(fam, solver, x, max_steps=300 if quick else 2000, tol=1e-6, trace=True, throw=False)
        gap = (sol.value - best).clamp_min(0)
        report.add_row(
            solver=name,
            converged=f"{int(sol.successful.sum())}/{len(sol.result)}",
            median_steps=int(sol.num_steps.median()),
            grad_evals=sol.stats["grad_evals"],
            time_s=round(sol.stats["wall_time"], 4),
            max_objective_gap=float(gap.max()),
        )
        curve = (sol.trace - best).clamp_min(1e-16).median(dim=1).values
        ax.semilogy(curve.numpy(), label=name)
        ax_t.loglog(sol.trace_times.numpy()[1:] * 1e3, curve.numpy()[1:], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("median f(y_k) - f*")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_title("doubleopt demo: batched solvers on logistic regression")
    ax.legend(fontsize=8, ncol=2)
    ax_t.set_xlabel("wall time of the whole batch (ms)")
    ax_t.set_ylabel("median f(y_k) - f*")
    ax_t.set_title(f"objective vs time ({torch.get_num_threads()} threads)")
    print(report.table())
    path = report.save({"batch": int(x.features.shape[0])}, fig)
    print(f"\nwrote {Path(path) / 'demo.png'} and results.json")
    return report.rows
