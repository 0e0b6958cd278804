"""LISTA / ALISTA vs ISTA / FISTA for sparse coding on do.problems.Lasso(250, 500).

Gaussian dictionary 250 x 500 (unit-norm columns), Bernoulli-Gaussian codes with 10% non-zeros, noise
0.01, lambda = 0.02. LISTA-CP (learned W_k, theta_k per layer; Chen et al. 2018) and ALISTA (analytic W,
learned gamma_k, theta_k; Liu et al. 2019), 16 layers, with firm shrinkage (a learned second threshold per
layer above which entries pass unshrunk; ``--shrinkage soft --support-selection 0.012`` gives Chen et al.'s
top-k support selection instead), trained on fresh samples (``do.amortized.fit``) with the layerwise loss:
the mean over layers of the log squared error to the true codes (``--loss regression``: last layer only).
Every choice is made on a validation set (``--n-val`` problems, their own seed, separate from the training
stream and from the held-out test set), then frozen and applied to the ``--n-test`` held-out problems:
the target NMSE (dB) = 10 log10(sum ||y - y_true||^2 / sum ||y_true||^2) is what ISTA reaches in
``--ista-iters`` iterations; LISTA/ALISTA's prefix depth is the fewest layers reaching it on the validation
set; FISTA's stopping rule is a tolerance on its own stationarity measure (the gradient-mapping norm, per
instance, ``do.solve(..., tol=...)``): the loosest value of ``--tol-grid`` whose solve reaches the target on
the validation set. On the test set each row reports its own NMSE (and whether it reaches the test set's
ISTA target) and its own wall time.

What is compared. Headline (``mode = do.solve``): ``do.solve(fam, FISTA(), x, tol=tol_val)`` against
``do.solve(fam, FullyAmortized(first k_val layers))`` (and the full network): the same entry point and its
overheads (the amortized solve also evaluates the certificate), the same batch, threads and dtype (float32).
Secondary (``mode = bare``): bare tensor code for both: the network's forward ``model(x, depth=k_val)``
against a bare loop of FISTA's ``init``/``step`` that stops when every instance's gradient-mapping norm is
<= tol_val (no per-instance compaction). Each ratio ``fista_time_ratio`` divides the FISTA time of the same
mode by the row's time. Both sides start cold (FISTA from 0; the network has no start). ISTA (fixed
``--ista-iters`` iterations through ``do.solve``) defines the target and is shown for reference.
Timing: one untimed warm-up call and the median of ``--repeats`` timed calls of the whole batch
(``doubleopt.bench.time_call``), ``--threads`` torch threads.

Goal: reach ISTA-500's NMSE with >= 10x less wall time than FISTA to that NMSE.
Break-even: training time / (FISTA time - LISTA time per instance), in the same mode.

Run: ``doubleopt bench lista`` (``-- --quick`` for a seconds-long smoke run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import doubleopt as do
from doubleopt.amortized import ALISTA, LISTA, FullyAmortized, break_even, fit
from doubleopt.bench import Report, conditions, parse_args, seed_all, set_threads, time_call


@dataclass
class Args:
    """LISTA / ALISTA (learned unrolled ISTA) vs FISTA to the NMSE ISTA reaches in ``--ista-iters`` iterations.

    What is compared: the wall time to the same target NMSE on the same held-out batch (``--n-test``
    problems, float32, ``--threads`` threads, cold: FISTA starts from 0, the networks have no start). Headline:
    both through ``do.solve`` (FISTA with its stopping tolerance chosen on the validation set, the network's
    prefix depth chosen on the validation set); secondary: both as bare tensor code. Each row reports its own
    NMSE, whether it reaches the test target, and its own time (one warm-up, median of ``--repeats``).

    Seeds (from ``--seed``, set once at the top of ``main``): the global generators (the networks' initial
    weights), the training stream (``fit``'s seed), the validation problems (``seed + 777``) and the held-out
    test problems (``seed + 12345``).
    """

    quick: bool = False  # tiny sizes: a smoke run of a few seconds
    m: int = 250  # measurements
    n: int = 500  # atoms (code dimension)
    lam: float = 0.02  # LASSO weight lambda (~ noise level x sqrt(2 log n); initial LISTA/ALISTA thresholds)
    layers: int = 16  # unrolled layers
    shrinkage: str = "firm"  # "firm" (learned second threshold, no top-k) or "soft" (+ support selection)
    support_selection: float = 0.0  # per-layer increment of the support-selection fraction (Chen et al.; soft)
    max_support: float = 0.13  # its cap
    loss: str = "layerwise"  # "layerwise" (log error of every layer: good prefixes) or "regression" (last layer)
    lista_steps: int = 6000  # training steps of LISTA
    alista_steps: int = 2000  # training steps of ALISTA
    batch_size: int = 64  # training problems per step
    lista_lr: float = 2e-4  # Adam learning rate of LISTA (cosine schedule)
    alista_lr: float = 2e-3  # Adam learning rate of ALISTA
    n_test: int = 1000  # held-out test problems (reported; no choice is made on them)
    n_val: int = 1000  # validation problems (seed + 777): choose the prefix depth and FISTA's tolerance
    tol_grid: tuple = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)  # FISTA tolerances tried on validation (loosest first)
    tol_bisections: int = 5  # geometric bisections refining FISTA's tolerance between two grid values
    fista_max_steps: int = 5000  # FISTA's step cap (the tolerance stops it first)
    ista_iters: int = 500  # ISTA iterations defining the target NMSE
    repeats: int = 5  # timed repeats (median)
    threads: int = 1  # torch threads (fixed; reported)
    seed: int = 0  # training stream seed (validation problems use seed + 777, test problems seed + 12345)
    out: str = "bench_results/lista"  # output folder


def nmse_db(y, codes) -> float:
    return float(10 * torch.log10(((y - codes) ** 2).sum() / (codes**2).sum()))


def iterate_nmse(fam, solver, x, iters: int) -> list[float]:
    """NMSE after each step of a core solver (its init/step, written out to record every iterate)."""
    y = fam.init(x)
    state = solver.init(fam, y, x)
    out = [nmse_db(y, x.codes)]
    for _ in range(iters):
        y, state = solver.step(fam, y, x, state)
        out.append(nmse_db(y, x.codes))
    return out


class Prefix(nn.Module):
    """The first ``depth`` layers of an unrolled network, as a model ``x -> y`` for ``FullyAmortized``."""

    def __init__(self, model: nn.Module, depth: int):
        super().__init__()
        self.model, self.depth = model, depth

    def forward(self, x):
        return self.model(x, depth=self.depth)


def fista_bare(fam, x, tol: float, max_steps: int):
    """FISTA as bare tensor code: its ``init``/``step`` until every instance's gradient-mapping norm is
    ``<= tol`` (the whole batch keeps stepping until the last one does); returns ``(y, steps)``."""
    solver = do.FISTA()
    y = fam.init(x)
    state = solver.init(fam, y, x)
    for k in range(1, max_steps + 1):
        y, state = solver.step(fam, y, x, state)
        if bool((solver.stationarity(fam, y, x, state) <= tol).all()):
            return y, k
    return y, max_steps


def fista_tol_on(fam, x, target: float, args) -> tuple[float, bool]:
    """FISTA's stopping tolerance chosen on ``x`` (the validation set): the loosest value of ``--tol-grid``
    whose solve reaches ``target`` NMSE, refined by ``--tol-bisections`` geometric bisections between it and
    the next looser grid value; ``(tightest grid value, False)`` if no grid value reaches it."""

    def reaches(tol: float) -> bool:
        sol = do.solve(fam, do.FISTA(), x, max_steps=args.fista_max_steps, tol=tol, throw=False)
        return nmse_db(sol.y, x.codes) <= target

    grid = sorted(args.tol_grid, reverse=True)
    ok = next((i for i, tol in enumerate(grid) if reaches(tol)), None)
    if ok is None:
        return grid[-1], False
    good = grid[ok]
    if ok > 0:  # the target lies between grid[ok - 1] (misses) and grid[ok] (reaches)
        bad = grid[ok - 1]
        for _ in range(args.tol_bisections):
            mid = (good * bad) ** 0.5
            good, bad = (mid, bad) if reaches(mid) else (good, mid)
    return good, True


@dataclass
class Baselines:
    """The classical side: the target NMSE on each set, the curves, and FISTA's tolerance (validation)."""

    target: float  # ISTA-k NMSE on the test set
    target_val: float  # ... on the validation set
    ista_curve: list[float]
    fista_curve: list[float]
    fista_tol: float
    tol_ok: bool


def classical_baselines(fam, x, x_val, args: Args) -> Baselines:
    """NMSE per iteration of ISTA and FISTA; the target on each set; FISTA's tolerance chosen on validation."""
    with torch.no_grad():
        target_val = iterate_nmse(fam, do.ISTA(), x_val, args.ista_iters)[-1]
        ista_curve = iterate_nmse(fam, do.ISTA(), x, args.ista_iters)
        fista_curve = iterate_nmse(fam, do.FISTA(), x, args.ista_iters)
        fista_tol, tol_ok = fista_tol_on(fam, x_val, target_val, args)
    b = Baselines(ista_curve[-1], target_val, ista_curve, fista_curve, fista_tol, tol_ok)
    print(
        f"ISTA-{args.ista_iters} NMSE: validation {target_val:.2f} dB, test {b.target:.2f} dB; FISTA tolerance chosen "
        f"on validation: {fista_tol:g}" + ("" if tol_ok else " (no tolerance of the grid reached the target)")
    )
    return b


def train_networks(fam, args: Args) -> tuple[dict, dict]:
    """LISTA and ALISTA trained on fresh problems each step (``fit``, seed ``--seed``): ``(models, fits)``."""
    models, fits = {}, {}
    for name, cls, steps, lr in [
        ("LISTA", LISTA, args.lista_steps, args.lista_lr),
        ("ALISTA", ALISTA, args.alista_steps, args.alista_lr),
    ]:
        model = cls(
            fam,
            layers=args.layers,
            support_selection=args.support_selection,
            max_support=args.max_support,
            shrinkage=args.shrinkage,
        )
        print(f"== training {name} ({steps} steps)")
        fits[name] = fit(
            FullyAmortized(model),
            fam,
            loss=args.loss,
            targets=lambda c: c.codes,
            steps=steps,
            batch_size=args.batch_size,
            lr=lr,
            seed=args.seed,
            val_every=max(steps // 10, 1),
        )
        models[name] = model
    return models, fits


def test_rows(fam, x, x_val, base: Baselines, models: dict, fits: dict, args: Args, report: Report) -> dict:
    """Every row on the test set: its own solve, its own NMSE, its own time. Returns the layer curves (test and
    validation), the chosen depths and the headline ratios."""
    B = x.codes.shape[0]
    common = {"threads": args.threads, "timing": f"warm-up + median of {args.repeats}"}

    def timed(fn):
        return time_call(fn, warmup=1, repeats=args.repeats)

    def add(method, mode, stopping, t, y, iters, iters_max, fista_t, train_time=None):
        err = nmse_db(y, x.codes)
        report.add_row(
            method=method,
            mode=mode,
            stopping=stopping,
            iters_or_layers=iters,
            iters_max=iters_max,
            nmse_db=err,
            reaches_target=err <= base.target,
            time_s=t,
            fista_time_ratio=fista_t / t,
            break_even_instances=break_even(train_time, fista_t / B, t / B) if train_time else float("nan"),
            **common,
        )

    fista_tol = base.fista_tol
    with torch.no_grad():
        # ---- the classical rows: FISTA (do.solve and bare), ISTA (defines the target) ----
        fista_solve = timed(lambda: do.solve(fam, do.FISTA(), x, max_steps=args.fista_max_steps, tol=fista_tol,
                                             throw=False))
        fista_b = timed(lambda: fista_bare(fam, x, fista_tol, args.fista_max_steps))
        ista = timed(lambda: do.solve(fam, do.ISTA(), x, max_steps=args.ista_iters, tol=0.0, throw=False))
        t_fs, t_fb = fista_solve.median, fista_b.median
        stop = f"tol {fista_tol:g} (validation)"
        steps_fs = fista_solve.result.num_steps.float()
        add("FISTA", "do.solve", stop, t_fs, fista_solve.result.y, float(steps_fs.mean()), int(steps_fs.max()), t_fs)
        add(f"ISTA-{args.ista_iters} (defines the target)", "do.solve", f"fixed {args.ista_iters} iterations",
            ista.median, ista.result.y, args.ista_iters, args.ista_iters, t_fs)
        y_fb, k_fb = fista_b.result
        add("FISTA", "bare", stop + ", whole batch", t_fb, y_fb, k_fb, k_fb, t_fb)
        # ---- the networks: the prefix depth chosen on validation, through do.solve and bare ----
        layer_curves, val_curves, depth, headline = {}, {}, {}, {}
        for name, model in models.items():
            layer_curves[name] = [nmse_db(y, x.codes) for y in model(x, return_all=True)]
            val_curves[name] = [nmse_db(y, x_val.codes) for y in model(x_val, return_all=True)]
            k = next((k + 1 for k, v in enumerate(val_curves[name]) if v <= base.target_val), None)
            chosen = f"first {k} of {args.layers} layers (validation)"
            if k is None:  # no prefix reaches the target on the validation set: the whole network, said so
                k, chosen = args.layers, "all layers (no prefix reaches the target on validation)"
            depth[name] = k
            train_time = fits[name].train_time
            prefix = FullyAmortized(Prefix(model, k))
            t = timed(lambda a=prefix: do.solve(fam, a, x, throw=False))
            add(f"{name}-{k}", "do.solve", chosen, t.median, t.result.y, k, k, t_fs, train_time)
            headline[f"{name}-{k}"] = (t_fs / t.median, report.rows[-1]["reaches_target"])
            if k < args.layers:
                full = FullyAmortized(model)
                t = timed(lambda a=full: do.solve(fam, a, x, throw=False))
                add(f"{name}-{args.layers}", "do.solve", "all layers", t.median, t.result.y, args.layers, args.layers,
                    t_fs, train_time)
            t = timed(lambda m=model, k=k: m(x, depth=k))
            add(f"{name}-{k}", "bare", chosen, t.median, t.result, k, k, t_fb, train_time)
    return {"layer_curves": layer_curves, "val_curves": val_curves, "depth": depth, "headline": headline}


def plot(base: Baselines, layer_curves: dict, args: Args, B: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(range(len(base.ista_curve)), base.ista_curve, label="ISTA")
    ax.plot(range(len(base.fista_curve)), base.fista_curve, label="FISTA")
    for name, curve in layer_curves.items():
        ax.plot(range(1, len(curve) + 1), curve, "o-", ms=3, label=f"{name} (layers)")
    ax.axhline(base.target, color="gray", ls="--", lw=0.8, label=f"ISTA-{args.ista_iters} NMSE")
    ax.set_xscale("symlog", linthresh=20)
    ax.set_xlim(left=0)
    ax.set_xlabel("iterations / layers")
    ax.set_ylabel("NMSE (dB), held-out")
    ax.set_title(f"sparse coding {args.m}x{args.n}, B={B} held-out problems")
    ax.legend(fontsize=8)
    return fig


def main(argv=None):
    args = parse_args(Args, argv)
    if args.quick:
        args.m, args.n, args.layers, args.lista_steps, args.alista_steps = 50, 100, 4, 30, 30
        args.n_test, args.n_val, args.ista_iters, args.repeats, args.fista_max_steps = 64, 64, 50, 1, 500
    set_threads(args.threads)
    seed_all(args.seed)  # the derived seeds (training stream, validation and test problems): see Args
    B = args.n_test
    started = conditions(dtype="float32", batch=B)

    # ---- data: validation (seed + 777) and held-out test (seed + 12345) problems ----
    fam = do.problems.Lasso(n_measurements=args.m, n_atoms=args.n, lam=args.lam, sparsity=0.1, noise=0.01)
    x_val = fam.sample(args.n_val, seed=args.seed + 777)
    x = fam.sample(args.n_test, seed=args.seed + 12345)

    # ---- the baseline (target, FISTA's tolerance), then ours (LISTA, ALISTA), then every row on the test set ----
    base = classical_baselines(fam, x, x_val, args)
    fista_iters = next((k for k, v in enumerate(base.fista_curve) if v <= base.target), None)  # plot/record only
    models, fits = train_networks(fam, args)
    report = Report("lista", out_dir=args.out)
    res = test_rows(fam, x, x_val, base, models, fits, args, report)
    headline = res["headline"]
    print(report.table())
    print("headline (both through do.solve, FISTA at its validation tolerance / the validation depth): "
          + ", ".join(f"{n} {r:.1f}x faster than FISTA" + ("" if ok else " (but does NOT reach the test target)")
                      for n, (r, ok) in headline.items()))

    # ---- report ----
    path = report.save(
        {
            "args": vars(args),
            "target_nmse_db": base.target,
            "target_nmse_db_validation": base.target_val,
            "fista_tol_from_validation": base.fista_tol,
            "fista_tol_reaches_validation_target": base.tol_ok,
            "depth_from_validation": res["depth"],
            "headline_fista_time_ratio_do_solve": {n: r for n, (r, _) in headline.items()},
            "validation_layer_curves": res["val_curves"],
            "fista_iters_to_target_on_test_not_used": fista_iters,
            "ista_curve": base.ista_curve,
            "fista_curve": base.fista_curve,
            "layer_curves": res["layer_curves"],
            "train_time_s": {k: v.train_time for k, v in fits.items()},
            "conditions": started,
        },
        plot(base, res["layer_curves"], args, B),
    )
    print(f"wrote {path}")
    return report.rows


if __name__ == "__main__":
    main()
