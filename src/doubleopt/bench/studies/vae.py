"""Amortized inference in a VAE on scikit-learn digits: encoder vs per-instance ELBO optimization vs both.

A small MLP VAE (``doubleopt.amortized.vae.DigitsVAE``) is trained on the digits train split. On the held-out
test images, the variational posterior q(z | x) = N(mu, diag exp(s)) is obtained by

* amortized: the encoder, one forward pass (``FullyAmortized(EncoderModel(vae))``);
* per-instance: Adam on -ELBO(mu, s; x) from the prior (mu = 0, s = 0) for K steps (``do.solve``,
  ``ELBOProblem``, fixed reparameterization noise as common random numbers);
* semi-amortized: the encoder's output refined by K Adam steps (``SemiAmortized(encoder, Adam, steps=K)``).

Every posterior is scored with a fresh, larger set of noise samples (so optimizing the fixed noise does not
flatter the per-instance methods). Reported: ELBO (nats per image) vs wall time per instance, the
amortization gap ELBO(best per-instance) - ELBO(encoder), and break-even: VAE training time (encoder and
decoder together, an upper bound on the encoder's share) / (time per-instance optimization needs to match
the encoder's ELBO - encoder time) per instance.

What is compared (every row): the same held-out batch (all test images, one batched ``do.solve`` per row), the
same objective (-ELBO with the same fixed noise) and gradient method (autograd through the decoder, for
per-instance and semi-amortized Adam alike), the same ``--threads`` torch threads, float32. Per-instance Adam
starts cold (from the prior), semi-amortized Adam warm (from the encoder's output). Timing: every row is its
own solve, timed as one untimed warm-up call and the median of ``--repeats`` timed calls of the whole batch
(``doubleopt.bench.time_call``); no row reuses another row's time or iteration count. The break-even uses the
measured time of the first per-instance budget K whose ELBO matches the encoder's.

Run: ``doubleopt bench vae`` (``-- --quick`` for a seconds-long smoke run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

import doubleopt as do
from doubleopt.amortized import FullyAmortized, SemiAmortized, break_even
from doubleopt.amortized.vae import DigitsVAE, ELBOProblem, EncoderModel, elbo, elbo_context, train_vae
from doubleopt.bench import Report, conditions, parse_args, seed_all, set_threads, time_call


@dataclass
class Args:
    """Amortized inference in a digits VAE: encoder vs per-instance Adam on the ELBO vs encoder + Adam refinement.

    What is compared (every row): ELBO on all held-out digits (scored with fresh noise samples) against wall time
    per instance, on the same batch with the same objective (-ELBO, the same fixed noise) and gradient method
    (autograd through the decoder), float32, the same ``--threads`` threads. Per-instance Adam starts cold (the
    prior), semi-amortized Adam warm (the encoder's output). Each row is its own batched solve, timed as one
    warm-up and the median of ``--repeats``; no row reuses another's time or iteration count.

    Seeds (from ``--seed``, set once at the top of ``main``): the global generators (the VAE's initial weights),
    VAE training (``train_vae``'s seed), the fixed inference noise (``seed + 1``) and the scoring noise
    (``seed + 2``).
    """

    quick: bool = False  # tiny sizes: a smoke run of a few seconds
    latent: int = 8  # latent dimension d
    hidden: int = 128  # hidden width of encoder and decoder
    train_steps: int = 6000  # VAE training steps (Adam, batch below)
    batch_size: int = 128  # training images per step
    lr: float = 2e-3  # VAE learning rate (cosine schedule)
    samples: int = 32  # reparameterization samples per image in the inference objective (fixed noise)
    eval_samples: int = 256  # fresh samples per image used to score every posterior
    adam_lr: float = 0.05  # Adam step size of per-instance and semi-amortized refinement
    steps: tuple = (10, 30, 100, 300)  # per-instance Adam budgets K
    match_tol: float = 0.05  # break-even: per-instance Adam "matches" the encoder within this many nats
    semi_steps: tuple = (1, 3, 10, 30, 100)  # refinement budgets K after the encoder
    repeats: int = 3  # timed repeats (median) of every row's solve, after one untimed warm-up
    threads: int = 1  # torch threads (fixed; reported)
    seed: int = 0  # training and noise seed
    out: str = "bench_results/vae"  # output folder


def train(args: Args) -> tuple[DigitsVAE, torch.Tensor, float]:
    """The VAE trained on the digits train split: ``(vae in eval mode, test images, training time in s)``."""
    train_images, _ = do.problems.load_dataset("digits", "train")
    test_images, _ = do.problems.load_dataset("digits", "test")
    vae = DigitsVAE(latent=args.latent, hidden=args.hidden)
    start = time.perf_counter()
    train_vae(vae, train_images, steps=args.train_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    train_time = time.perf_counter() - start
    vae.eval()
    return vae, test_images, train_time


def inference_rows(args: Args, vae: DigitsVAE, test_images: torch.Tensor, report: Report):
    """The encoder row, then one row per budget K of per-instance Adam (cold) and of semi-amortized Adam (warm).
    Returns ``(encoder time per instance, encoder ELBO, {method: [(time per instance, ELBO, K)]})``."""
    problem = ELBOProblem(vae.decoder)
    x = elbo_context(test_images, args.samples, args.latent, seed=args.seed + 1)
    fresh = elbo_context(test_images, args.eval_samples, args.latent, seed=args.seed + 2).noise
    B, d = test_images.shape[0], args.latent

    def score(y) -> float:
        with torch.no_grad():
            return float(elbo(vae.decoder, test_images, y[:, :d], y[:, d:], fresh).mean())

    encoder = EncoderModel(vae)
    timing = f"warm-up + median of {args.repeats}"
    common = {"grad": "autograd", "threads": args.threads, "timing": timing}

    def timed_solve(solver, cold=False, **kw):
        """One row's own batched solve: warm-up + median of ``--repeats`` (the cold start is timed too)."""
        with torch.no_grad():
            return time_call(
                lambda: do.solve(problem, solver, x, problem.init(x) if cold else None, throw=False, **kw),
                warmup=1,
                repeats=args.repeats,
            )

    timer = timed_solve(FullyAmortized(encoder))
    t_enc = timer.median / B
    elbo_enc = score(timer.result.y)
    report.add_row(method="amortized (encoder)", start="-", K=0, elbo=elbo_enc, ms_per_instance=1e3 * t_enc, **common)
    points = {"per-instance Adam": [], "semi-amortized": []}
    starts = {"per-instance Adam": "cold (prior)", "semi-amortized": "warm (encoder)"}
    for K in args.steps:  # each budget is its own solve, timed on its own
        timer = timed_solve(do.Adam(lr=args.adam_lr), cold=True, max_steps=K, tol=0.0)
        points["per-instance Adam"].append((timer.median / B, score(timer.result.y), K))
    for K in args.semi_steps:
        timer = timed_solve(SemiAmortized(encoder, do.Adam(lr=args.adam_lr / 5), steps=K), max_steps=K + 2, tol=0.0)
        points["semi-amortized"].append((timer.median / B, score(timer.result.y), K))
    for name, pts in points.items():
        for t, e, K in pts:
            report.add_row(method=name, start=starts[name], K=K, elbo=e, ms_per_instance=1e3 * t, **common)
    return t_enc, elbo_enc, points


def plot(args: Args, t_enc: float, elbo_enc: float, points: dict, gap: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([1e3 * t_enc], [elbo_enc], color="k", zorder=3, label="amortized (encoder)")
    for name, pts in points.items():
        ax.plot([1e3 * t for t, _, _ in pts], [e for _, e, _ in pts], "o-", label=name)
        for t, e, K in pts:
            ax.annotate(f"K={K}", (1e3 * t, e), fontsize=7, xytext=(3, -8), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("wall time per instance (ms), batch of held-out digits")
    ax.set_ylabel("ELBO (nats / image, fresh samples)")
    ax.set_title(f"amortized inference, digits VAE (d={args.latent}); amortization gap {gap:.2f} nats")
    ax.legend(fontsize=8)
    return fig


def main(argv=None):
    args = parse_args(Args, argv)
    if args.quick:
        args.train_steps, args.hidden, args.steps, args.semi_steps = 100, 32, (5, 20), (2, 5)
        args.eval_samples, args.repeats = 16, 1
    set_threads(args.threads)
    seed_all(args.seed)  # the derived seeds (training, inference and scoring noise): see Args
    started = conditions(dtype="float32")

    # ---- train the VAE; then every row on the held-out images ----
    vae, test_images, train_time = train(args)
    report = Report("vae", out_dir=args.out)
    t_enc, elbo_enc, points = inference_rows(args, vae, test_images, report)

    # ---- summary: amortization gap and break-even ----
    best = max(e for pts in points.values() for _, e, _ in pts)
    gap = best - elbo_enc
    match = next((t for t, e, _ in points["per-instance Adam"] if e >= elbo_enc - args.match_tol), None)
    n_star = break_even(train_time, match, t_enc) if match is not None else float("inf")
    print(report.table())
    print(
        f"amortization gap {gap:.2f} nats/image; per-instance Adam matches the encoder after "
        f"{'never' if match is None else f'{1e3 * match:.2f} ms/instance'}; break-even {n_star:.0f} instances"
    )
    path = report.save(
        {
            "args": vars(args),
            "train_time_s": train_time,
            "amortization_gap_nats": gap,
            "break_even_instances": n_star,
            "conditions": {**started, "batch": test_images.shape[0]},
        },
        plot(args, t_enc, elbo_enc, points, gap),
    )
    print(f"wrote {path}")
    return report.rows


if __name__ == "__main__":
    main()
