"""Batched solvers vs per-instance loops: L-BFGS vs SciPy's L-BFGS-B, Adam vs torch.optim.Adam.

B L2-regularized logistic-regression problems (float64) are solved to the same final gradient norm by
  * doubleopt's batched L-BFGS (one solve for the whole batch) and SciPy's L-BFGS-B called in a Python loop
    over the instances (objective and gradient in NumPy, closed form, so the baseline pays no torch overhead);
  * doubleopt's batched Adam and torch.optim.Adam in a loop (same lr, same number of steps: identical math;
    the loop is timed on ``adam_loop_subset`` instances and scaled to B, since it is linear in B).
Timing: warm-up, median of repeats, threads fixed (see doubleopt.bench). Run: ``doubleopt bench solvers``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

import doubleopt as do
from doubleopt.bench import Report, conditions, parse_args, set_threads, time_call


@dataclass
class Args:
    batch: int = 256  # number of problem instances B
    n_features: int = 10  # features per problem (the solution has n_features + 1 entries)
    n_points: int = 200  # data points per problem
    l2: float = 1e-2  # L2 regularization (makes every instance strongly convex)
    tol: float = 1e-6  # target final gradient 2-norm for the L-BFGS comparison
    adam_lr: float = 0.05  # Adam's learning rate (both implementations)
    adam_steps: int = 300  # Adam steps (both implementations)
    threads: int = 2  # torch / BLAS threads
    repeats: int = 3  # timed repeats (median reported)
    adam_loop_subset: int = (
        32  # torch.optim loop timed on this many instances, scaled by B / subset (it is linear in B)
    )
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


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(Args, argv)
    if args.quick:
        args.batch, args.adam_steps, args.repeats = 16, 30, 1
    set_threads(args.threads)
    fam = do.problems.LogisticRegression(
        n_features=args.n_features, n_points=args.n_points, l2=args.l2, dtype=torch.float64
    )
    x = fam.sample(args.batch, seed=args.seed)
    y0 = fam.init(x)
    n = fam.dim
    report = Report("solvers", out_dir=args.out)

    # ---- L-BFGS: batched vs SciPy loop -------------------------------------------------------------
    ours = time_call(lambda: do.solve(fam, do.LBFGS(), x, max_steps=1000, tol=args.tol), repeats=args.repeats)
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

    ref = time_call(scipy_loop, repeats=args.repeats)
    g_ours = np.linalg.norm(fam.value_and_grad(sol.y, x)[1].numpy(), axis=1)
    g_ref = np.array([np.linalg.norm(funs[i](ref.result[i])[1]) for i in range(args.batch)])
    agree = float(np.abs(sol.y.numpy() - ref.result).max())
    report.add_row(
        method="doubleopt LBFGS (batched)",
        time_s=ours.median,
        max_grad_norm=float(g_ours.max()),
        speedup=ref.median / ours.median,
    )
    report.add_row(method="scipy L-BFGS-B (loop)", time_s=ref.median, max_grad_norm=float(g_ref.max()), speedup=1.0)

    # ---- Adam: batched vs torch.optim loop -----------------------------------------------------------
    adam = do.Adam(lr=args.adam_lr)
    ours_adam = time_call(
        lambda: do.solve(fam, adam, x, max_steps=args.adam_steps, tol=0.0, throw=False), repeats=args.repeats
    )

    subset = min(args.adam_loop_subset, args.batch)

    def torch_loop():
        out = []
        for i in range(subset):
            p = y0[i].clone().requires_grad_(True)
            opt = torch.optim.Adam([p], lr=args.adam_lr)
            xi = do.problems.RegressionContext(x.features[i : i + 1], x.targets[i : i + 1])
            for _ in range(args.adam_steps):
                opt.zero_grad()
                fam.objective(p[None], xi)[0].backward()
                opt.step()
            out.append(p.detach())
        return torch.stack(out)

    ref_adam = time_call(torch_loop, repeats=1, warmup=0)
    ref_adam.median *= args.batch / subset  # per-instance loop: linear in B
    adam_agree = float((ours_adam.result.y[:subset] - ref_adam.result).abs().max())
    ga = fam.value_and_grad(ours_adam.result.y, x)[1].norm(dim=-1)
    gb = fam.value_and_grad(ref_adam.result, do.problems.RegressionContext(x.features[:subset], x.targets[:subset]))[
        1
    ].norm(dim=-1)
    report.add_row(
        method="doubleopt Adam (batched)",
        time_s=ours_adam.median,
        max_grad_norm=float(ga.max()),
        speedup=ref_adam.median / ours_adam.median,
    )
    report.add_row(method="torch.optim.Adam (loop)", time_s=ref_adam.median, max_grad_norm=float(gb.max()), speedup=1.0)

    cond = conditions(dtype="float64", batch=args.batch, n=n, n_points=args.n_points)
    data = {
        "conditions": cond,
        "lbfgs_max_abs_diff_vs_scipy": agree,
        "adam_max_abs_diff_vs_torch": adam_agree,
        "lbfgs_speedup": ref.median / ours.median,
        "adam_speedup": ref_adam.median / ours_adam.median,
    }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [r["method"] for r in report.rows]
    ax.barh(names, [r["time_s"] for r in report.rows], color=["C0", "C7", "C0", "C7"])
    ax.set_xscale("log")
    ax.set_xlabel(f"wall time (s), B={args.batch}, float64, {args.threads} threads")
    ax.set_title(f"L-BFGS speedup {data['lbfgs_speedup']:.1f}x, Adam speedup {data['adam_speedup']:.1f}x")
    report.save(data, fig)
    print(report.table())
    print(
        f"\nL-BFGS: batched is {data['lbfgs_speedup']:.1f}x faster than the SciPy loop "
        f"(max |y - y_scipy| = {agree:.1e}); Adam: {data['adam_speedup']:.1f}x faster than the torch.optim loop "
        f"(max |diff| = {adam_agree:.1e}). Conditions: {cond}"
    )
    return data


if __name__ == "__main__":
    main()
