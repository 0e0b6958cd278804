"""LISTA / ALISTA vs ISTA / FISTA for sparse coding on do.problems.Lasso(250, 500).

Gaussian dictionary 250 x 500 (unit-norm columns), Bernoulli-Gaussian codes with 10% non-zeros, noise
0.01, lambda = 0.02. LISTA-CP (learned W_k, theta_k per layer; Chen et al. 2018) and ALISTA (analytic W,
learned gamma_k, theta_k; Liu et al. 2019), 16 layers, with firm shrinkage (a learned second threshold per
layer above which entries pass unshrunk; ``--shrinkage soft --support-selection 0.012`` gives Chen et al.'s
top-k support selection instead), trained on fresh samples (``do.amortized.fit``) with the layerwise loss:
the mean over layers of the log squared error to the true codes (``--loss regression``: last layer only).
On 1000 held-out problems we report the NMSE
(dB) = 10 log10(sum ||y - y_true||^2 / sum ||y_true||^2) after each layer / iteration, the NMSE that ISTA
reaches in 500 iterations (the target), the FISTA iterations to reach it, and the wall time of the batch
for each method to reach it: FISTA via ``do.solve`` (max_steps = those iterations), LISTA/ALISTA as a model
forward and via ``do.solve(FullyAmortized(model))`` (which also evaluates the certificate).

Goal: 16 layers reach ISTA-500's NMSE with >= 10x less wall time than FISTA to that NMSE.
Break-even: training time / (FISTA time - LISTA time per instance).
Timing: median of ``--repeats`` runs of the whole batch after a warm-up, ``--threads`` torch threads,
float32; the machine is shared with other jobs.

Run: ``doubleopt bench lista`` (``-- --quick`` for a seconds-long smoke run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import doubleopt as do
from doubleopt.amortized import ALISTA, LISTA, FullyAmortized, break_even, fit
from doubleopt.bench import Report, conditions, parse_args, set_threads, time_call


@dataclass
class Args:
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
    n_test: int = 1000  # held-out problems
    ista_iters: int = 500  # ISTA iterations defining the target NMSE
    repeats: int = 5  # timed repeats (median)
    threads: int = 1  # torch threads (fixed; reported)
    seed: int = 0  # training stream seed (test problems use seed + 12345)
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


def main(argv=None):
    args = parse_args(Args, argv)
    if args.quick:
        args.m, args.n, args.layers, args.lista_steps, args.alista_steps = 50, 100, 4, 30, 30
        args.n_test, args.ista_iters, args.repeats = 64, 50, 1
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fam = do.problems.Lasso(n_measurements=args.m, n_atoms=args.n, lam=args.lam, sparsity=0.1, noise=0.01)
    x = fam.sample(args.n_test, seed=args.seed + 12345)
    B = args.n_test

    # ---- classical baselines: NMSE per iteration, the target, FISTA's iterations to it ----------------
    with torch.no_grad():
        ista_curve = iterate_nmse(fam, do.ISTA(), x, args.ista_iters)
        fista_curve = iterate_nmse(fam, do.FISTA(), x, args.ista_iters)
    target = ista_curve[-1]
    fista_iters = next((k for k, v in enumerate(fista_curve) if v <= target), None)
    print(f"ISTA-{args.ista_iters} NMSE {target:.2f} dB; FISTA reaches it at iteration {fista_iters}")

    # ---- train LISTA and ALISTA (regression to the true codes, fresh problems each step) ------------
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

    # ---- timing to the target NMSE ----------------------------------------------------------------
    report = Report("lista", out_dir=args.out)
    with torch.no_grad():
        t_fista = None
        if fista_iters is not None:
            k = max(fista_iters, 1)
            t_fista = time_call(
                lambda: do.solve(fam, do.FISTA(), x, max_steps=k, tol=0.0, throw=False), repeats=args.repeats
            ).median
        t_ista = time_call(
            lambda: do.solve(fam, do.ISTA(), x, max_steps=args.ista_iters, tol=0.0, throw=False),
            repeats=max(1, args.repeats // 2),
        ).median
        report.add_row(
            method=f"ISTA-{args.ista_iters}",
            iters_or_layers=args.ista_iters,
            nmse_db=target,
            reaches_target=True,
            time_s=t_ista,
            fista_time_ratio=(t_fista or float("nan")) / t_ista,
            break_even_instances=float("nan"),
        )
        report.add_row(
            method="FISTA",
            iters_or_layers=fista_iters if fista_iters is not None else -1,
            nmse_db=fista_curve[fista_iters] if fista_iters is not None else fista_curve[-1],
            reaches_target=fista_iters is not None,
            time_s=t_fista or float("nan"),
            fista_time_ratio=1.0,
            break_even_instances=float("nan"),
        )
        layer_curves = {}
        for name, model in models.items():
            outs = model(x, return_all=True)
            layer_curves[name] = [nmse_db(y, x.codes) for y in outs]
            t_fwd = time_call(lambda m=model: m(x), repeats=args.repeats).median
            t_solve = time_call(
                lambda m=model: do.solve(fam, FullyAmortized(m), x, throw=False), repeats=args.repeats
            ).median
            variants = [
                (f"{name}-{args.layers} (forward)", t_fwd, args.layers),
                (f"{name}-{args.layers} (do.solve)", t_solve, args.layers),
            ]
            k_star = next((k + 1 for k, v in enumerate(layer_curves[name]) if v <= target), None)
            if k_star is not None and k_star < args.layers:  # the shortest prefix of the network reaching it
                t_k = time_call(lambda m=model, k=k_star: m(x, depth=k), repeats=args.repeats).median
                variants.append((f"{name}, first {k_star} layers (forward)", t_k, k_star))
            for label, t, k in variants:
                ratio = (t_fista / t) if t_fista else float("nan")
                report.add_row(
                    method=label,
                    iters_or_layers=k,
                    nmse_db=layer_curves[name][k - 1],
                    reaches_target=layer_curves[name][k - 1] <= target,
                    time_s=t,
                    fista_time_ratio=ratio,
                    break_even_instances=break_even(fits[name].train_time, (t_fista or 0) / B, t / B),
                )
    print(report.table())

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(range(len(ista_curve)), ista_curve, label="ISTA")
    ax.plot(range(len(fista_curve)), fista_curve, label="FISTA")
    for name, curve in layer_curves.items():
        ax.plot(range(1, len(curve) + 1), curve, "o-", ms=3, label=f"{name} (layers)")
    ax.axhline(target, color="gray", ls="--", lw=0.8, label=f"ISTA-{args.ista_iters} NMSE")
    ax.set_xscale("symlog", linthresh=20)
    ax.set_xlim(left=0)
    ax.set_xlabel("iterations / layers")
    ax.set_ylabel("NMSE (dB), held-out")
    ax.set_title(f"sparse coding {args.m}x{args.n}, B={B} held-out problems")
    ax.legend(fontsize=8)
    path = report.save(
        {
            "args": vars(args),
            "target_nmse_db": target,
            "fista_iters_to_target": fista_iters,
            "ista_curve": ista_curve,
            "fista_curve": fista_curve,
            "layer_curves": layer_curves,
            "train_time_s": {k: v.train_time for k, v in fits.items()},
            "conditions": conditions(dtype="float32", batch=B, note="shared machine: other jobs running"),
        },
        fig,
    )
    print(f"wrote {path}")
    return report.rows


if __name__ == "__main__":
    main()
