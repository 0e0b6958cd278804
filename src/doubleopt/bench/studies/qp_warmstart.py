"""Parametric QP warm starts: an MLP predicts the interior point's primal-dual start from the QP's data.

Families (``--family``): ``mpc`` (default; ``MPCQP``: one step of linear MPC, 6 states, 3 inputs, horizon 10,
tight input bounds, the initial state ``x0`` varies: n = 90, m = 180, p = 60) and ``portfolio``
(``PortfolioQP``: Markowitz, the expected returns vary: n = 20, m = 40, p = 1). Solved as ``PrimalDualQP``
(variable = packed ``[z, s, lam, nu]``). A ``QPWarmStartNet`` (ReLU MLP) is trained with
``do.amortized.fit(loss="regression")`` on the interior point's own optima of a fixed training set (solved
once at tol 1e-10 and cached). On ``--n-test`` held-out instances, to the scaled KKT residual ``--tol``:

* cold: our batched interior point (``do.solvers.QP``) from the CVXOPT start;
* warm (plain): from the prediction, ``s, lam`` clipped at the solver's default floor 1e-3;
* warm (centred): ``s, lam = max(pred, mu0)`` (a move toward the central path), no other clipping;
* warm (polish + centred): the active-set polish of the prediction where it passes the certificate
  (the optimum, zero interior-point steps), else the centred prediction;
* warm (active-set xK + centred): up to K polishes, re-guessing the active set from the last polished point
  (primal-dual active-set rule: drop negative multipliers, add violated rows) on the still uncertified
  instances only, then the centred interior point for the rest;
* safeguarded: the active-set warm start inside ``Safeguarded(SemiAmortized(...), KKTResidual(),
  fallback=cold QP)``: every instance is certified (KKT residual + duality gap <= tol) or falls back (the
  fallback interior point stops at tol / 10 so that its answers pass the certificate at tol);
* OSQP (benchmark-only dependency), one instance at a time, matrices set up once and ``update(q, l, u)``
  per instance (its parametric mode), ``eps_abs = tol, eps_rel = 0``, cold (``warm_starting=False``) and
  warm (``warm_start(x=z_pred, y=[nu_pred; lam_pred])``); its answers are certified with the same measure.

What is compared (every row): the same held-out instances (OSQP: the first ``--osqp-instances`` of them), the
same certificate (scaled KKT residual + duality gap, ``KKTResidual``) at the same threshold ``--tol`` for every
answer, OSQP's included (its own stopping test is ``eps_abs = tol``), the same ``--threads`` threads, float64;
the ``start`` column says cold or warm (the model's prediction). Iterations exclude the model's forward pass
but count every polish (one factorization of the interior point's reduced KKT matrix, ``QP.polish``) as one
iteration; every row counts its own solve's iterations (the safeguarded row too: its first stage records its
own polishes). Times include the model's forward pass (batched, divided per instance). Timing: every row is
its own solve, one untimed warm-up call then the median of ``--repeats`` timed calls (``time_call``): the
whole batch for the batched rows, the whole loop (one OSQP setup, then ``k`` solves) for the OSQP rows.
Break-even: training time (incl. the reference solves) / time saved per instance.

Run: ``doubleopt bench qp_warmstart`` (``-- --quick`` for a seconds-long smoke run,
``-- --family portfolio --out bench_results/qp_warmstart_portfolio`` for the portfolio family).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

import doubleopt as do
from doubleopt.amortized import FullyAmortized, KKTResidual, Safeguarded, SemiAmortized, break_even, fit
from doubleopt.amortized.qp_warmstart import PrimalDualQP, QPWarmStartNet, WarmQPState, WarmStartQP
from doubleopt.bench import Report, conditions, parse_args, seed_all, set_threads, time_call
from doubleopt.bench.baselines import require
from doubleopt.problems.qp import QPData, qp_kkt_residual, unpack_start
from doubleopt.solvers.qp import QP


@dataclass
class Args:
    """Warm-starting a QP interior point from a learned prediction (MPC or portfolio QPs) vs cold starts and OSQP.

    What is compared (every row): the same held-out instances (OSQP: the first ``--osqp-instances``), the same
    certificate (scaled KKT residual + duality gap) at the same threshold ``--tol`` for every answer, OSQP's
    included, float64, the same ``--threads`` threads; the ``start`` column says cold or warm (the model's
    prediction). Iterations count every polish as one; times include the model's forward pass. Every row is its
    own solve: one warm-up, then the median of ``--repeats`` (the whole batch; OSQP: the whole loop).

    Seeds (set once at the top of ``main``): the global generators (the network's initial weights) and the
    training stream (``fit``'s seed) from ``--seed``; the normalization instances ``seed + 2``, the held-out
    instances ``seed + 12345``.
    """

    quick: bool = False  # tiny sizes: a smoke run of a few seconds
    family: str = "mpc"  # "mpc" (MPCQP: x0 varies) or "portfolio" (PortfolioQP: expected returns vary)
    n_assets: int = 20  # portfolio: size n (m = 2n bounds, p = 1 budget constraint)
    n_states: int = 6  # mpc: state dimension
    n_inputs: int = 3  # mpc: input dimension
    horizon: int = 10  # mpc: steps T (n = T (n_states + n_inputs), p = T n_states, m = 2n)
    u_max: float = 0.2  # mpc: input bound (tight: the inputs saturate)
    hidden: int = 256  # MLP width
    depth: int = 3  # MLP hidden layers
    activation: str = "relu"  # "relu" (the QP solution map is piecewise affine) or "silu"
    train_size: int = 50000  # training instances (solved once by the interior point, cached)
    train_steps: int = 8000  # Adam steps of the regression
    batch_size: int = 256  # training minibatch
    lr: float = 2e-3  # Adam learning rate (cosine schedule)
    n_test: int = 1000  # held-out instances
    tol: float = 1e-6  # target scaled KKT residual (and certificate threshold)
    center: float = 1e-3  # mu0 of the centred warm start: s, lam = max(pred, mu0)
    polish_rounds: int = 5  # active-set polishes (primal-dual active-set updates) before the interior point
    max_steps: int = 100  # interior-point step cap
    osqp_instances: int = 1000  # instances in the OSQP loops
    repeats: int = 3  # timed repeats (median) of each batched solve
    threads: int = 1  # torch threads (fixed; reported)
    seed: int = 0  # seed of training set and test instances
    out: str = "bench_results/qp_warmstart"  # output folder


OSQP = "the OSQP baseline of the qp_warmstart study"


def osqp_setup(x, tol: float, warm: bool):
    """An OSQP solver for the family (its matrices are shared: set up once) and its per-instance data."""
    import scipy.sparse as sp

    osqp = require("osqp", OSQP)

    Q, A, G = x.Q[0].numpy(), x.A[0].numpy(), x.G[0].numpy()
    q, b, h = x.q.numpy(), x.b.numpy(), x.h.numpy()
    C = sp.csc_matrix(np.vstack([A, G]))
    lo = np.concatenate([b, np.full(h.shape, -np.inf)], axis=1)
    up = np.concatenate([b, h], axis=1)
    solver = osqp.OSQP()
    solver.setup(sp.triu(sp.csc_matrix(Q), format="csc"), q[0], C, lo[0], up[0], eps_abs=tol, eps_rel=0.0,
                 polishing=False, warm_starting=warm, verbose=False, max_iter=100000)
    return solver, q, lo, up


def osqp_loop(solver, q, lo, up, starts, warm: bool):
    """OSQP on each instance (``update(q, l, u)``, then a warm start from the prediction or, with
    ``warm_starting=False``, OSQP's own zero start at every solve); returns (z, y, iterations)."""
    zs, ys, iters = [], [], []
    for i in range(q.shape[0]):
        solver.update(q=q[i], l=lo[i], u=up[i])
        if warm:
            solver.warm_start(x=starts.z[i].numpy(), y=np.concatenate([starts.nu[i].numpy(), starts.lam[i].numpy()]))
        res = solver.solve(raise_error=False)
        zs.append(res.x)
        ys.append(res.y)
        iters.append(res.info.iter)
    return np.stack(zs), np.stack(ys), np.array(iters, dtype=float)


@dataclass(frozen=True)
class CountingWarmStartQP(WarmStartQP):
    """:class:`WarmStartQP` that keeps the polish counts of its last ``init`` (``record["polish_steps"]``), so
    the safeguarded row counts its own polishes (``Safeguarded`` returns no solver state)."""

    record: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def init(self, problem, y, x):
        state = super().init(problem, y, x)
        self.record["polish_steps"] = state.polish_steps.clone()
        return state


def make_family(args: Args) -> PrimalDualQP:
    """The QP family of ``--family`` as a primal-dual problem (the network predicts z, nu, lam and s)."""
    if args.family == "portfolio":
        base = do.problems.PortfolioQP(n_assets=args.n_assets)
    elif args.family == "mpc":
        base = do.problems.MPCQP(n_states=args.n_states, n_inputs=args.n_inputs, horizon=args.horizon,
                                 u_max=args.u_max)
    else:
        raise ValueError(f"--family must be 'mpc' or 'portfolio', got {args.family!r}")
    return PrimalDualQP(base)


def train_model(args: Args, fam: PrimalDualQP) -> tuple[QPWarmStartNet, float, float]:
    """The warm-start MLP regressed on the interior point's own (cached) optima:
    ``(model, training time incl. the reference solves, final validation loss)``."""
    n, m, p = fam.sizes
    reference = WarmStartQP(warm=False, qp=QP(skip_tol=1e-10))
    t0 = time.perf_counter()
    x_norm = fam.sample(min(2000, args.train_size), seed=args.seed + 2)
    y_norm = do.solve(fam, reference, x_norm, tol=1e-10, max_steps=args.max_steps).y
    model = QPWarmStartNet(n, m, p, hidden=args.hidden, depth=args.depth, activation=args.activation)
    model = model.set_normalization(x_norm, y_norm)
    norm_time = time.perf_counter() - t0
    print(f"training the warm-start MLP on {args.train_size} cached solutions ({args.train_steps} steps)")
    fit_res = fit(FullyAmortized(model), fam, loss="regression", reference=reference, train_size=args.train_size,
                  steps=args.train_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  val_every=max(args.train_steps // 10, 1))
    return model, fit_res.train_time + norm_time, fit_res.final_val


def batched_rows(args: Args, fam, model, x, train_time: float, report: Report) -> tuple[dict, dict, torch.Tensor]:
    """Cold, the warm variants and the safeguarded solve, each its own batched solve (one row each).
    Returns ``(timings, iterations, prediction)`` by method."""
    B, tol = x.q.shape[0], args.tol
    qp = QP(skip_tol=tol)
    qp_nofloor = QP(skip_tol=tol, warm_start_floor=1e-12)
    methods = {
        "cold": (None, WarmStartQP(warm=False, qp=qp)),
        "warm (plain, floor 1e-3)": (model, WarmStartQP(qp=qp)),
        f"warm (centred, mu0={args.center:g})": (model, WarmStartQP(qp=qp_nofloor, center=args.center)),
        "warm (polish + centred)": (model, WarmStartQP(qp=qp_nofloor, center=args.center, polish=True,
                                                       polish_tol=tol)),
        f"warm (active-set x{args.polish_rounds} + centred)": (
            model, WarmStartQP(qp=qp_nofloor, center=args.center, polish=True, polish_tol=tol,
                               polish_rounds=args.polish_rounds)),
    }
    cert = KKTResidual()

    def run(mdl, solver):
        y0 = None
        if mdl is not None:
            y0 = mdl(x)
        return do.solve(fam, solver, x, y0, tol=tol, max_steps=args.max_steps, throw=False)

    timings, iters = {}, {}
    with torch.no_grad():
        pred = model(x)
        for name, (mdl, solver) in methods.items():
            timings[name] = time_call(lambda mdl=mdl, s=solver: run(mdl, s), repeats=args.repeats)
        # the safeguard's first stage: the active-set row's solver configuration, counting its own polishes
        counting = CountingWarmStartQP(qp=qp_nofloor, center=args.center, polish=True, polish_tol=tol,
                                       polish_rounds=args.polish_rounds)
        guard = Safeguarded(SemiAmortized(model, counting, steps=args.max_steps), cert,
                            fallback=WarmStartQP(warm=False, qp=QP(skip_tol=tol / 10)), tol=tol,
                            fallback_steps=args.max_steps)
        timings["safeguarded (active-set + centred, cold fallback)"] = time_call(lambda: guard.solve(fam, x),
                                                                              repeats=args.repeats)
    t_cold = timings["cold"].median / B
    timing = f"warm-up + median of {args.repeats}"
    for name, tm in timings.items():
        sol = tm.result  # the last timed call's own solution: its own iterations
        if name.startswith("safeguarded"):
            # num_steps counts the prediction step, the first stage's interior-point steps and, where it fell
            # back, the fallback's; every instance was polished in the first stage (its own count)
            steps = sol.num_steps.float() - 1 + counting.record["polish_steps"].float()
        else:
            steps = sol.num_steps.float()
            if isinstance(sol.state, WarmQPState):  # each polish is one KKT factorization: counted as an iteration
                steps = steps + sol.state.polish_steps.float()
        iters[name] = steps.numpy()
        r = cert(fam, sol.y, x)
        per = tm.median / B
        extra = {}
        if name.startswith("safeguarded"):
            extra = {"certified_directly": int(sol.certified.sum()), "fell_back": int(sol.fell_back.sum())}
        report.add_row(
            method=name,
            start="cold (CVXOPT start)" if name == "cold" else "warm (model)",
            tol=tol,
            threads=args.threads,
            timing=f"batched, {timing}",
            ms_per_inst=1e3 * per,
            speedup_vs_cold=t_cold / per,
            iters_mean=float(steps.mean()),
            iters_median=float(steps.median()),
            iters_max=float(steps.max()),
            iter_ratio_vs_cold=float(iters.get("cold", steps).mean() / steps.mean().clamp_min(1e-9)),
            certified=f"{int((r <= tol).sum())}/{B}",
            successful=f"{int(sol.successful.sum())}/{B}",
            break_even_instances=break_even(train_time, t_cold, per) if name != "cold" else float("nan"),
            **extra,
        )
    return timings, iters, pred


def osqp_rows(args: Args, fam, model, x, pred, t_cold: float, iters: dict, report: Report) -> float:
    """OSQP cold and warm (the model's prediction), one instance at a time on the first ``--osqp-instances``
    held-out instances, each loop timed on its own; returns the model's forward time per instance."""
    B, tol, p = x.q.shape[0], args.tol, fam.sizes[2]
    timing = f"warm-up + median of {args.repeats}"
    k = min(args.osqp_instances, B)
    xo = QPData(*(t[:k] for t in (x.Q, x.q, x.A, x.b, x.G, x.h)))
    starts = unpack_start(pred[:k], xo)
    t_pred = time_call(lambda: model(x), repeats=args.repeats).median / B  # (with autograd on, as before)
    for label, warm in (("OSQP cold", False), ("OSQP warm (model)", True)):
        # each timed call sets OSQP up once (fresh adaptive rho: every call the same) and loops over the k
        tm = time_call(lambda w=warm: osqp_loop(*osqp_setup(xo, tol, w), starts, w), repeats=args.repeats)
        z, yd, it = tm.result
        z, yd = torch.as_tensor(z), torch.as_tensor(yd)
        kkt = qp_kkt_residual(xo, z, yd[:, p:], yd[:, :p])
        per = tm.median / k + (t_pred if warm else 0.0)
        iters[label] = it
        report.add_row(method=label, start="warm (model)" if warm else "cold (OSQP zero start)", tol=tol,
                       threads=args.threads, timing=f"loop over {k}, {timing}", ms_per_inst=1e3 * per,
                       speedup_vs_cold=t_cold / per, iters_mean=float(it.mean()), iters_median=float(np.median(it)),
                       iters_max=float(it.max()), iter_ratio_vs_cold=float("nan"),
                       certified=f"{int((kkt <= tol).sum())}/{k}", successful="", break_even_instances=float("nan"))
    return t_pred


def plot(args: Args, fam, timings: dict, iters: dict, report: Report):
    """Iteration histograms (interior point) and time per instance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, m, p = fam.sizes
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), layout="constrained")
    ipm = [nm for nm in timings if not nm.startswith("safeguarded")]
    top = int(max(iters[nm].max() for nm in ipm))
    bins = np.arange(-0.5, min(top, 30) + 1.5)
    for nm in ipm:
        ax1.hist(np.minimum(iters[nm], bins[-1] - 0.5), bins=bins, histtype="step", lw=1.6, label=nm)
    ax1.set_xlabel(f"interior-point iterations to KKT residual {args.tol:g}")
    ax1.set_ylabel("instances")
    ax1.set_title(f"{type(fam.base).__name__} n={n}, m={m}, p={p}: {args.n_test} held-out instances", fontsize=10)
    ax1.legend(fontsize=8)
    names = [r["method"] for r in report.rows]
    vals = [r["ms_per_inst"] for r in report.rows]
    ax2.barh(range(len(names)), vals, color=["C0" if "OSQP" not in nm else "C3" for nm in names])
    ax2.set_yticks(range(len(names)), names, fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    ax2.set_xlabel("ms per instance (end to end, model forward included)")
    ax2.set_title(f"time per instance (batch {args.n_test}, {args.threads} thread(s); OSQP: loop)", fontsize=10)
    return fig


def main(argv=None):
    args = parse_args(Args, argv)
    require("osqp", OSQP)  # the baseline first: if it is missing, the study stops before training
    if args.quick:
        args.n_assets, args.train_size, args.train_steps, args.n_test, args.hidden = 8, 256, 30, 64, 32
        args.osqp_instances, args.repeats, args.batch_size = 16, 1, 64
    set_threads(args.threads)
    seed_all(args.seed)  # the derived seeds (normalization and held-out instances): see Args
    started = conditions(dtype="float64", batch=args.n_test)
    fam = make_family(args)

    # ---- ours: train the warm-start network; then every row on the held-out instances, OSQP last ----
    model, train_time, final_val = train_model(args, fam)
    x = fam.sample(args.n_test, seed=args.seed + 12345)
    report = Report("qp_warmstart", out_dir=args.out)
    timings, iters, pred = batched_rows(args, fam, model, x, train_time, report)
    t_cold = timings["cold"].median / args.n_test
    t_pred = osqp_rows(args, fam, model, x, pred, t_cold, iters, report)
    print(report.table())

    # ---- report ----
    with torch.no_grad():
        pred_kkt = KKTResidual()(fam, pred, x)
    summary = {
        "train_time_s": train_time,
        "final_val_loss": final_val,
        "prediction_kkt_median": float(pred_kkt.median()),
        "model_forward_ms_per_inst": 1e3 * t_pred,
    }
    print(summary)
    path = report.save(
        {"args": vars(args), "conditions": started, "summary": summary},
        plot(args, fam, timings, iters, report),
    )
    print(f"wrote {path}")
    return report.rows


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
