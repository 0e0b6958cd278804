"""The main job (``doubleopt demo``): learn to solve optimal transport problems, then trust but verify.

Story, for someone new to amortized optimization:

1. We must solve many similar problems: move the ink of one handwritten digit onto another at least cost
   (entropic optimal transport between two 8x8 images). Classically, each pair is solved from scratch
   by Sinkhorn's algorithm.
2. Amortization: a neural network sees many training pairs and learns to predict the solution (the dual
   potential) in one forward pass (Meta OT, Amos et al. 2023). Training costs time once; each new pair is
   then almost free.
3. Trust: a prediction may be wrong (and badly so on unusual inputs). Every answer has a certificate, the
   marginal error of the transport plan it defines. The safeguarded solver accepts the prediction where the
   certificate passes, and elsewhere runs Sinkhorn *starting from the prediction*, so every answer is
   certified and the fallback is cheaper than starting cold.

Then on held-out pairs: classical, amortized and safeguarded are compared on time, objective gap, certified
fraction and the break-even count (how many instances repay the training time). Writes ``demo.png``,
``results.json`` and ``table.md`` under ``out_dir``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .._solve import solve
from ..bench.report import Report
from ..bench.timing import set_threads
from ..problems.ot import DigitsOT
from ..solvers.sinkhorn import Sinkhorn
from ._certificates import MarginalError
from ._safeguard import Safeguarded
from ._solvers import FullyAmortized
from ._train import break_even, fit
from .meta_ot import PotentialMLP, ZeroPotential

INTRO = """\
doubleopt demo: amortized optimization, certified.
  Task: optimal transport between pairs of handwritten digits (8x8 images as mass distributions,
        squared-distance cost, entropic regularization eps = 0.01).
  Classical:   solve each pair from scratch with Sinkhorn's algorithm.
  Amortized:   a neural network trained on many pairs predicts each solution in one forward pass.
  Safeguarded: check every prediction's certificate (marginal error <= {tol:g}); only where it fails, run
               Sinkhorn starting from the prediction. Every answer it returns is certified.
"""


def run_demo(
    out_dir: str = "demo_results",
    quick: bool = False,
    seed: int = 0,
    train_seconds: float = 60.0,
    batch: int = 1000,
    tol: float = 1e-3,
) -> list[dict]:
    """Train a Meta OT potential network (~``train_seconds``), then compare on held-out digit pairs.

    Args:
        out_dir: folder for ``demo.png``, ``results.json`` and ``table.md``.
        quick: seconds-long run (small network, short training, 64 pairs).
        seed: seeds the training stream and the held-out pairs.
        train_seconds: training time budget (the network trains with a progress bar).
        batch: held-out pairs.
        tol: certificate threshold (L1 marginal error) and classical stopping tolerance.

    Returns:
        The table rows (also printed and written to ``table.md``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    set_threads(1)
    torch.manual_seed(seed)
    hidden, steps = (64, 60) if quick else (256, 100_000)
    train_seconds = min(train_seconds, 3.0) if quick else train_seconds
    batch = 64 if quick else batch
    print(INTRO.format(tol=tol))
    train_fam, test_fam = DigitsOT(split="train"), DigitsOT(split="test")
    model = PotentialMLP(train_fam.n, train_fam.m, hidden=hidden)
    print(f"1) training the network on random pairs of training digits (about {train_seconds:.0f} s) ...")
    res = fit(
        FullyAmortized(model),
        train_fam,
        loss="objective",
        steps=steps,
        batch_size=128,
        lr=1e-3,
        time_limit=train_seconds,
        seed=seed,
        val_every=200,
        val_size=128,
    )
    print(f"   trained {res.steps} steps in {res.train_time:.1f} s\n")

    x = test_fam.sample(batch, seed=seed + 777)
    print(f"2) solving {batch} held-out pairs (digits the network never saw) three ways ...\n")
    with torch.no_grad():
        ref = solve(test_fam, Sinkhorn(), x, tol=1e-9, max_steps=20000, throw=False)
        f_star = ref.value
        runs = {}
        cold = Safeguarded(
            FullyAmortized(ZeroPotential(test_fam.n)), MarginalError(), Sinkhorn(), tol, 20000, round_steps=16
        )
        runs["classical (Sinkhorn from scratch)"] = cold.solve(test_fam, x)
        runs["amortized (network only)"] = solve(test_fam, FullyAmortized(model), x, tol=tol, throw=False)
        guard = Safeguarded(FullyAmortized(model), MarginalError(), Sinkhorn(), tol, 20000, round_steps=16)
        runs["safeguarded (network + check + fallback)"] = guard.solve(test_fam, x)
    report = Report("demo", out_dir=out_dir)
    t_classical = runs["classical (Sinkhorn from scratch)"].stats["wall_time"] / batch
    scale = f_star.abs().clamp_min(1e-12)
    for name, sol in runs.items():
        t = sol.stats["wall_time"] / batch
        gap = ((sol.value - f_star) / scale).clamp_min(0)
        classical = name.startswith("classical")
        fell = sol.fell_back if sol.fell_back is not None and not classical else torch.zeros(batch, dtype=torch.bool)
        certified = sol.successful
        report.add_row(
            method=name,
            time_per_pair_ms=round(1e3 * t, 4),
            speedup=round(t_classical / t, 2),
            median_rel_objective_gap=float(gap.median()),
            max_rel_objective_gap=float(gap.max()),
            certified_pct=round(100 * float(certified.float().mean()), 1),
            fell_back_pct=round(100 * float(fell.float().mean()), 1),
            break_even_pairs="-" if classical else f"{break_even(res.train_time, t_classical, t):.0f}",
        )
    print(report.table())
    rows = {r["method"].split(" (")[0]: r for r in report.rows}
    am, sg = rows["amortized"], rows["safeguarded"]
    if sg["speedup"] > 1.05:
        verdict = f"still {sg['speedup']:.1f}x faster than Sinkhorn from scratch (its fallback starts close)"
    elif sg["speedup"] > 0.95:
        verdict = "about as fast as Sinkhorn from scratch (the network needs more training to help)"
    else:
        verdict = f"{1 / sg['speedup']:.1f}x slower than Sinkhorn from scratch (the network needs more training)"
    print(f"""
How to read this: 'certified' = the answer's marginal error is <= {tol:g}, a checked guarantee.
  - The network alone answers {am["speedup"]:.0f}x faster than Sinkhorn, but only
    {am["certified_pct"]}% of its answers pass the check (objective off by a median
    {am["median_rel_objective_gap"]:.1e}, relative).
  - The safeguarded solver certifies {sg["certified_pct"]}% of the answers ({sg["fell_back_pct"]}% needed the
    fallback) and is {verdict}.
  - Break-even = training time / time saved per pair: after that many pairs, training has paid off.
  Both Sinkhorn runs shrink the batch as instances finish (rounds of 16, 32, 64, ... steps).
""")

    # ---- plots -----------------------------------------------------------------------------------
    with torch.no_grad():
        pred = model(x)
        pred_err = test_fam.marginal_error(pred, x)
        curves = {}
        for label, f0 in (
            ("from scratch (f = 0)", test_fam.init(x)),
            ("from the network's prediction", pred),
        ):
            solver, f = Sinkhorn(), f0
            state = solver.init(test_fam, f, x)
            errs = [float(solver.stationarity(test_fam, f, x, state).median())]
            for _ in range(100 if quick else 300):
                f, state = solver.step(test_fam, f, x, state)
                errs.append(float(solver.stationarity(test_fam, f, x, state).median()))
            curves[label] = errs
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    ax = axes[0]
    ax.hist(torch.log10(pred_err).numpy(), bins=30, color="tab:orange")
    ax.axvline(torch.log10(torch.tensor(tol)).item(), color="k", ls="--", label=f"certificate tol {tol:g}")
    ax.set_xlabel("log10 marginal error of the network's prediction")
    ax.set_ylabel("held-out pairs")
    ax.set_title("which predictions pass the check")
    ax.legend()
    ax = axes[1]
    for label, errs in curves.items():
        ax.semilogy(errs, label=label)
    ax.axhline(tol, color="k", ls="--", lw=0.8)
    ax.set_xlabel("Sinkhorn iteration")
    ax.set_ylabel("median marginal error")
    ax.set_title("warm start: the fallback starts close")
    ax.legend()
    ax = axes[2]
    names = [r["method"].split(" (")[0] for r in report.rows]
    times = [r["time_per_pair_ms"] for r in report.rows]
    bars = ax.bar(names, times, color=["tab:blue", "tab:orange", "tab:green"])
    for b, r in zip(bars, report.rows):
        ax.annotate(
            f"{r['certified_pct']}% certified",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_yscale("log")
    ax.set_ylabel("ms per pair (batched)")
    ax.set_title(f"{batch} held-out pairs, training {res.train_time:.0f} s")
    fig.suptitle("doubleopt demo: amortized optimal transport between digits (Meta OT), certified")
    path = report.save(
        {
            "train_time_s": res.train_time,
            "train_steps": res.steps,
            "tol": tol,
            "batch": batch,
            "threads": 1,
            "note": "timings on a shared machine",
        },
        fig,
    )
    print(f"\nwrote {Path(path) / 'demo.png'}, results.json and table.md")
    return report.rows
