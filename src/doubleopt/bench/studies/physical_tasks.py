"""Learning curves of coupled learning vs equilibrium propagation vs exact gradient descent on three tasks
(allosteric, multi-output linear regression, Iris classification), and final error vs network size.

Every rule takes plain steps k <- clip(k - lr * g, k_min, k_max) from the same initial conductances; the
learning rate of each rule is the best of a small grid (`--lr-grid`), chosen on the final training cost, so
the comparison is between tuned rules. Run: `doubleopt bench physical_tasks [-- --quick]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import doubleopt.physical as ph
from doubleopt.bench import Report, conditions, parse_args, seed_all, set_threads


@dataclass
class Args:
    """Coupled learning vs equilibrium propagation vs exact gradient descent on resistor networks.

    Learning curves on three tasks (allosteric, 3 -> 2 linear regression, Iris) at ``--n-nodes`` nodes, and the
    final regression test cost vs network size (``--sizes``). What is compared: the three learning rules, each
    from the same network and the same initial conductances (cold), the same plain clipped step
    k <- clip(k - lr * g, k_min, k_max), the same number of steps, full batch, float64, the same threads; each
    rule with its own best learning rate of ``--lr-grid`` (by final training cost). Accuracy and cost only: no
    timings. Seeds: ``--seed`` builds every network and data split (the task builders' NumPy streams) and the
    training order; the global generators are seeded with it too.
    """

    n_nodes: int = 200  # network size for the learning curves
    steps: int = 1000  # training steps per run
    eta: float = 0.1  # coupled-learning clamping strength
    beta: float = 0.1  # EP nudging strength (symmetric +-beta)
    lr_grid: list[float] = field(default_factory=lambda: [10.0, 30.0, 100.0, 300.0])  # learning rates tried
    sizes: list[int] = field(default_factory=lambda: [50, 100, 200, 400, 800])  # sizes for error vs size
    size_steps: int = 500  # steps per run in the size sweep
    eval_every: int = 20  # evaluation period (steps)
    seed: int = 0  # network / data seed
    threads: int = 1  # torch / BLAS threads
    quick: bool = False  # seconds-long smoke run
    out: str = "bench_results/physical_tasks"  # output folder


def make_tasks(n_nodes: int, seed: int) -> list[ph.Task]:
    return [
        ph.allosteric_task(n_nodes, n_targets=3, amplitude=0.05, seed=seed),
        ph.regression_task(n_nodes, n_inputs=3, n_outputs=2, seed=seed),
        ph.iris_task(n_nodes, seed=seed),
    ]


def best_run(
    task: ph.Task, rule, lrs: list[float], steps: int, eval_every: int, seed: int
) -> tuple[float, ph.TrainResult]:
    """The run with the lowest final training cost over the learning rates ``lrs``: ``(lr, result)``."""
    best = None
    for lr in lrs:
        res = ph.train(
            task.network,
            task.x_train,
            task.t_train,
            rule,
            steps=steps,
            lr=lr,
            seed=seed,
            eval_inputs=task.x_test,
            eval_targets=task.t_test,
            metric=task.metric,
            eval_every=eval_every,
        )
        final = res.train_cost[-1] if res.train_cost else res.eval_cost[-1]
        if np.isfinite(final) and (best is None or final < best[0]):
            best = (final, lr, res)
    return best[1], best[2]


def learning_rules(args: Args) -> dict:
    """The three rules compared (coupled learning, symmetric EP, the exact gradient), by row name."""
    return {
        "coupled": ph.CoupledLearning(args.eta),
        "ep": ph.EquilibriumPropagation(args.beta, symmetric=True),
        "exact": ph.ExactGradient(),
    }


def run_curves(args: Args, rules: dict, report: Report) -> dict[tuple[str, str], ph.TrainResult]:
    """Learning curves: every rule on every task at ``--n-nodes`` nodes; one row per (task, rule)."""
    curves = {}
    for task in make_tasks(args.n_nodes, args.seed):
        for name, rule in rules.items():
            lr, res = best_run(task, rule, args.lr_grid, args.steps, args.eval_every, args.seed)
            curves[(task.name, name)] = res
            row = {
                "study": "curves",
                "task": task.name,
                "rule": name,
                "nodes": args.n_nodes,
                "steps": args.steps,
                "lr": lr,
                "cost_init": res.eval_cost[0],
                "test_cost_final": res.eval_cost[-1],
                # the task's metric (Iris: test accuracy); None for the tasks scored by cost alone
                "metric": task.metric_name or None,
                "test_metric_final": res.eval_metric[-1] if task.metric is not None else None,
            }
            if task.metric is not None:
                row[f"test_{task.metric_name}"] = res.eval_metric[-1]
            report.add_row(**row)
            print(row, flush=True)
    return curves


def run_size_sweep(args: Args, rules: dict, report: Report) -> dict[str, list[float]]:
    """Regression test cost after ``--size-steps`` steps for each size of ``--sizes``; one row per (size, rule)."""
    size_err = {name: [] for name in rules}
    for n in args.sizes:
        task = ph.regression_task(n, n_inputs=3, n_outputs=2, seed=args.seed)
        for name, rule in rules.items():
            lr, res = best_run(task, rule, args.lr_grid, args.size_steps, args.size_steps, args.seed)
            size_err[name].append(res.eval_cost[-1])
            report.add_row(
                study="size",
                task="regression",
                rule=name,
                nodes=n,
                steps=args.size_steps,
                lr=lr,
                cost_init=res.eval_cost[0],
                test_cost_final=res.eval_cost[-1],
                metric=None,
                test_metric_final=None,
            )
            print(report.rows[-1], flush=True)
    return size_err


def plot(args: Args, rules: dict, curves: dict, size_err: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(18, 4))
    for i, tname in enumerate(["allosteric", "regression", "iris"]):
        for name in rules:
            res = curves[(tname, name)]
            ax[i].semilogy(res.steps, np.maximum(res.eval_cost, 1e-30), label=name)
        ax[i].set_title(f"{tname} ({args.n_nodes} nodes)")
        ax[i].set_xlabel("step")
        ax[i].set_ylabel("test cost" if tname != "allosteric" else "cost")
        ax[i].legend(fontsize=8)
    iris_acc = {name: curves[("iris", name)].eval_metric[-1] for name in rules}
    ax[2].set_title("iris, test acc " + ", ".join(f"{k} {v:.2f}" for k, v in iris_acc.items()), fontsize=9)
    for name in rules:
        ax[3].loglog(args.sizes, size_err[name], "o-", label=name)
    ax[3].set_xlabel("nodes")
    ax[3].set_ylabel(f"test cost after {args.size_steps} steps")
    ax[3].set_title("regression: error vs network size")
    ax[3].legend(fontsize=8)
    return fig


def main(argv=None):
    args = parse_args(Args, argv)
    if args.quick:
        args.n_nodes, args.steps, args.lr_grid, args.sizes, args.size_steps = 60, 60, [30.0], [40, 80], 40
    set_threads(args.threads)
    # seeds: --seed builds the networks and data (passed to the task builders) and the training order
    # (do.physical.train's seed); the global generators are seeded with it as well (nothing draws from them)
    seed_all(args.seed)
    cond = conditions(dtype="float64")
    report = Report("physical_tasks", out_dir=args.out)
    rules = learning_rules(args)
    curves = run_curves(args, rules, report)
    size_err = run_size_sweep(args, rules, report)
    fig = plot(args, rules, curves, size_err)
    path = report.save({"args": vars(args), "conditions": cond}, fig)
    print(report.table())
    print(f"results in {path}")
    return report


if __name__ == "__main__":
    main()
