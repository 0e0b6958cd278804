"""Batched solvers vs per-instance loops: L-BFGS vs SciPy's L-BFGS-B, Adam vs torch.optim.Adam.

B L2-regularized logistic-regression problems (float64) are solved to the same final gradient norm by
  * doubleopt's batched L-BFGS (one solve for the whole batch) and SciPy's L-BFGS-B called in a Python loop
    over the instances (objective and gradient in NumPy, closed form, so the baseline pays no torch overhead);
  * doubleopt's batched Adam and torch.optim.Adam in a loop over all B instances (same lr, same number of
    steps: identical math), each side timed twice with the same gradient: by autograd on both sides, and by
    the problem's analytic gradient on both sides (the loop sets ``p.grad`` from it). Every row: warm-up +
    median of ``repeats``.
Timing: warm-up, median of repeats, threads fixed (see doubleopt.bench); the process CPU time of the same
calls is reported too (less sensitive to other jobs on a shared machine than wall time), with the load average.
``--sizes`` sweeps the L-BFGS comparison over problem sizes ``FEATURESxPOINTS`` (plot: speedup vs size).
Run: ``doubleopt bench solvers`` (``-- --threads 1`` for one thread, ``-- --sizes 3x100 10x200``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import torch

import doubleopt as do
from doubleopt.bench import Report, conditions, parse_args, seed_all, set_threads, time_call


@dataclass
class Args:
    """Batched solvers vs per-instance loops on B L2-regularized logistic regressions (float64).

    What is compared: (1) doubleopt's batched L-BFGS vs SciPy's L-BFGS-B in a Python loop, both to the same
    final gradient 2-norm ``--tol`` (NumPy closed-form objective and gradient for SciPy), also swept over the
    problem sizes ``--sizes``; (2) doubleopt's batched Adam vs torch.optim.Adam in a loop over all B instances,
    same lr and number of steps (identical math), timed once with autograd gradients on both sides and once with
    the analytic gradient on both sides. Both sides start cold from the same point, run with the same
    ``--threads`` threads in the same process; each time is one warm-up then the median of ``--repeats`` (wall
    and process CPU time).

    Seeds: ``--seed`` draws the problem batch (``fam.sample(seed=...)``) and seeds the global generators; nothing
    else is random.
    """

    batch: int = 256  # number of problem instances B
    n_features: int = 10  # features per problem (the solution has n_features + 1 entries)
    n_points: int = 200  # data points per problem
    l2: float = 1e-2  # L2 regularization (makes every instance strongly convex)
    tol: float = 1e-6  # target final gradient 2-norm for the L-BFGS comparison
    adam_lr: float = 0.05  # Adam's learning rate (both implementations)
    adam_steps: int = 300  # Adam steps (both implementations)
    threads: int = 2  # torch / BLAS threads
    repeats: int = 3  # timed repeats (median reported)
    sizes: list[str] = field(default_factory=lambda: ["3x100", "10x200", "30x200"])  # L-BFGS sweep: FEATURESxPOINTS
    seed: int = 0  # seed of the problem batch
    quick: bool = False  # tiny sizes for a smoke test
    out: str = "bench_results/solvers"  # output folder


def numpy_logistic(features: np.ndarray, labels: np.ndarray, l2: float):
    """f and grad of one instance in NumPy (the SciPy baseline's objective)."""
    Z = np.concatenate([features, np.ones((features.shape[0], 1))], axis=1)
    N = Z.shape[0]

    def fun(w):
        z = Z @ w
        f = np.mean(np.logaddexp(0.0, z) - labels * z) + 0.5 * l2 * w @ w
        p = 1.0 / (1.0 + np.exp(-z))
        return f, Z.T @ (p - labels) / N + l2 * w

    return fun


def timed(fn, repeats: int):
    """``time_call`` (wall: warm-up + median) plus the median process CPU time of the same timed calls."""
    cpu: list[float] = []

    def run():
        c = time.process_time()
        out = fn()
        cpu.append(time.process_time() - c)
        return out

    t = time_call(run, repeats=repeats)
    return t, float(np.median(cpu[-repeats:]))


def lbfgs_vs_scipy(args: Args, n_features: int, n_points: int) -> dict:
    """Batched L-BFGS vs SciPy's L-BFGS-B in a loop on B logistic regressions of one size."""
    fam = do.problems.LogisticRegression(n_features=n_features, n_points=n_points, l2=args.l2, dtype=torch.float64)
    x = fam.sample(args.batch, seed=args.seed)
    y0 = fam.init(x)
    n = fam.dim
    ours, ours_cpu = timed(lambda: do.solve(fam, do.LBFGS(), x, max_steps=1000, tol=args.tol), args.repeats)
    sol = ours.result
    X, t = x.features.numpy(), x.targets.numpy()
    funs = [numpy_logistic(X[i], t[i], args.l2) for i in range(args.batch)]

    def scipy_loop():
        out = []
        for i in range(args.batch):
            r = scipy.optimize.minimize(
                funs[i],
                y0[i].numpy(),
                jac=True,
                method="L-BFGS-B",
                options={"gtol": args.tol / np.sqrt(n), "ftol": 0.0, "maxiter": 1000},
            )
            out.append(r.x)
        return np.stack(out)

    ref, ref_cpu = timed(scipy_loop, args.repeats)
    g_ours = np.linalg.norm(fam.value_and_grad(sol.y, x)[1].numpy(), axis=1)
    g_ref = np.array([np.linalg.norm(funs[i](ref.result[i])[1]) for i in range(args.batch)])
    return {
        "size": f"{n_features}x{n_points}",
        "ours_s": ours.median,
        "ours_cpu_s": ours_cpu,
        "scipy_s": ref.median,
        "scipy_cpu_s": ref_cpu,
        "speedup": ref.median / ours.median,
        "cpu_speedup": ref_cpu / ours_cpu,
        "ours_max_grad_norm": float(g_ours.max()),
        "scipy_max_grad_norm": float(g_ref.max()),
        "ours_steps_max": int(sol.num_steps.max()),
        "max_abs_diff": float(np.abs(sol.y.numpy() - ref.result).max()),
    }


def lbfgs_rows(args: Args, report: Report) -> tuple[dict, list[dict]]:
    """The L-BFGS comparison at the main size (two rows) and the size sweep: ``(main comparison, sweep)``."""
    main_cmp = lbfgs_vs_scipy(args, args.n_features, args.n_points)
    report.add_row(
        method="doubleopt LBFGS (batched)",
        time_s=main_cmp["ours_s"],
        cpu_s=main_cmp["ours_cpu_s"],
        max_grad_norm=main_cmp["ours_max_grad_norm"],
        speedup=main_cmp["speedup"],
        cpu_speedup=main_cmp["cpu_speedup"],
    )
    report.add_row(
        method="scipy L-BFGS-B (loop)",
        time_s=main_cmp["scipy_s"],
        cpu_s=main_cmp["scipy_cpu_s"],
        max_grad_norm=main_cmp["scipy_max_grad_norm"],
        speedup=1.0,
        cpu_speedup=1.0,
    )
    sweep = []
    for size in args.sizes:
        nf, npts = map(int, size.lower().split("x"))
        same = (nf, npts) == (args.n_features, args.n_points)
        sweep.append(main_cmp if same else lbfgs_vs_scipy(args, nf, npts))
    return main_cmp, sweep


def adam_rows(args: Args, report: Report) -> dict[str, dict]:
    """Batched Adam vs a torch.optim.Adam loop, with the same gradient method on both sides (autograd, then
    analytic): two rows per method; returns ``{method: {"speedup", "max_abs_diff"}}``."""
    fam = do.problems.LogisticRegression(
        n_features=args.n_features, n_points=args.n_points, l2=args.l2, dtype=torch.float64
    )
    x = fam.sample(args.batch, seed=args.seed)
    y0 = fam.init(x)

    class AutogradLogistic(type(fam)):
        """The same problem with its gradient by autograd (the base class's smooth_value_and_grad)."""

        smooth_value_and_grad = do.Problem.smooth_value_and_grad

    fam_autograd = AutogradLogistic(n_features=args.n_features, n_points=args.n_points, l2=args.l2,
                                    dtype=torch.float64)
    adam = do.Adam(lr=args.adam_lr)

    def torch_loop(analytic: bool):
        out = []
        for i in range(args.batch):
            p = y0[i].clone().requires_grad_(not analytic)
            opt = torch.optim.Adam([p], lr=args.adam_lr)
            xi = do.problems.RegressionContext(x.features[i : i + 1], x.targets[i : i + 1])
            for _ in range(args.adam_steps):
                if analytic:
                    with torch.no_grad():
                        p.grad = fam.smooth_value_and_grad(p[None], xi)[1][0]
                else:
                    opt.zero_grad()
                    fam.objective(p[None], xi)[0].backward()
                opt.step()
            out.append(p.detach())
        return torch.stack(out)

    rows = {}
    for grad_method, problem in (("autograd", fam_autograd), ("analytic", fam)):
        ours_t, ours_c = timed(
            lambda pr=problem: do.solve(pr, adam, x, max_steps=args.adam_steps, tol=0.0, throw=False), args.repeats
        )
        ref_t, ref_c = timed(lambda a=grad_method == "analytic": torch_loop(a), args.repeats)
        agree_gm = float((ours_t.result.y.detach() - ref_t.result).abs().max())
        rows[grad_method] = {"speedup": ref_t.median / ours_t.median, "max_abs_diff": agree_gm}
        for name, t, c, y, speed, cspeed in (
            ("doubleopt Adam (batched)", ours_t, ours_c, ours_t.result.y, ref_t.median / ours_t.median, ref_c / ours_c),
            ("torch.optim.Adam (loop)", ref_t, ref_c, ref_t.result, 1.0, 1.0),
        ):
            report.add_row(
                method=f"{name}, {grad_method} gradient",
                time_s=t.median,
                cpu_s=c,
                max_grad_norm=float(fam.value_and_grad(y, x)[1].norm(dim=-1).max()),
                speedup=speed,
                cpu_speedup=cspeed,
            )
    return rows


def plot(args: Args, report: Report, data: dict, sweep: list[dict], load_before):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    names = [r["method"] for r in report.rows]
    ax.barh(names, [r["time_s"] for r in report.rows], color=["C0", "C7"] * (len(names) // 2))
    ax.set_xscale("log")
    ax.set_xlabel(f"wall time (s), B={args.batch}, float64, {args.threads} threads")
    ax.set_title(f"L-BFGS {data['lbfgs_speedup']:.1f}x, Adam {data['adam_speedup']:.1f}x (autograd) / "
                 f"{data['adam_speedup_analytic']:.1f}x (analytic)")
    if sweep:
        labels = [r["size"] for r in sweep]
        ax2.plot(labels, [r["speedup"] for r in sweep], "o-", label="wall time")
        ax2.plot(labels, [r["cpu_speedup"] for r in sweep], "s--", label="process CPU time")
        ax2.axhline(20, color="C3", lw=0.8, ls=":", label="goal 20x")
        ax2.set_ylim(bottom=0)
        ax2.legend(fontsize=8)
    ax2.set_xlabel("problem size (features x points)")
    ax2.set_ylabel("batched L-BFGS speedup vs SciPy loop")
    ax2.set_title(f"B={args.batch}, tol={args.tol:g}, load avg {load_before[0]:.1f}", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(Args, argv)
    if args.quick:
        args.batch, args.adam_steps, args.repeats, args.sizes = 16, 30, 1, ["3x50"]
    set_threads(args.threads)
    seed_all(args.seed)  # the problem batch is drawn with fam.sample(seed=args.seed); nothing else is random
    load_before = os.getloadavg()
    report = Report("solvers", out_dir=args.out)

    # ---- L-BFGS: batched vs SciPy loop; then Adam: batched vs torch.optim loop, same gradient method ----
    main_cmp, sweep = lbfgs_rows(args, report)
    adam = adam_rows(args, report)

    # ---- report ----
    agree = main_cmp["max_abs_diff"]
    adam_agree = max(r["max_abs_diff"] for r in adam.values())
    cond = conditions(
        dtype="float64",
        batch=args.batch,
        n=args.n_features + 1,
        n_points=args.n_points,
        tol=args.tol,
        load_average_before=[round(v, 2) for v in load_before],
        load_average_after=[round(v, 2) for v in os.getloadavg()],
    )
    data = {
        "conditions": cond,
        "lbfgs_max_abs_diff_vs_scipy": agree,
        "adam_max_abs_diff_vs_torch": adam_agree,
        "lbfgs_speedup": main_cmp["speedup"],
        "lbfgs_cpu_speedup": main_cmp["cpu_speedup"],
        "adam_speedup": adam["autograd"]["speedup"],
        "adam_speedup_analytic": adam["analytic"]["speedup"],
        "lbfgs_sweep": sweep,
    }
    report.save(data, plot(args, report, data, sweep, load_before))
    print(report.table())
    if sweep:
        from doubleopt.bench.report import markdown_table

        print("\nL-BFGS size sweep:\n" + markdown_table(sweep))
    print(
        f"\nL-BFGS: batched is {data['lbfgs_speedup']:.1f}x faster than the SciPy loop "
        f"(max |y - y_scipy| = {agree:.1e}); Adam: {data['adam_speedup']:.1f}x (autograd on both sides) / "
        f"{data['adam_speedup_analytic']:.1f}x (analytic on both sides) faster than the torch.optim loop "
        f"(max |diff| = {adam_agree:.1e}). Conditions: {cond}"
    )
    return data


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
