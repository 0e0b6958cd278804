"""Differentiable QP layers: doubleopt's batched interior point vs qpth and cvxpylayers.

Same random feasible QPs (do.problems.RandomQP, per-instance matrices) for every method, float64; solutions
are checked to agree within `agree_tol` before anything is timed. Timed: forward + backward of sum(z * w) w.r.t.
(Q, q, A, b, G, h); every row (cvxpylayers included) is timed the same way: one untimed warm-up call, then the
median of `repeats` calls, in the same process, with `threads` threads: torch's and BLAS's threads, and
cvxpylayers' solver thread pool (diffcp's n_jobs_forward / n_jobs_backward, passed through solver_args; its
default is one thread per CPU). The process CPU time of the same number of calls is recorded too (on a machine
shared with other jobs, wall time includes waiting for a core). Each row states its accuracy setting (column
`accuracy`): our KKT tolerance `tol`, qpth's eps (its default, 1e-12), cvxpylayers' SCS tolerance (`cvx_eps`,
eps_abs = eps_rel, the headline cvxpylayers row) and, in a second row, cvxpylayers at SCS's default accuracy
(eps_abs = eps_rel = 1e-4 in SCS 3; it does not agree with the others to `agree_tol`: `max_dz` says how far).
Every solve starts cold (no warm start). `speedup` is the row's time over ours (how many times slower). Ours
runs the interior-point iterations in the native C kernel where it is available (a row times the same layer
with QP(native=False), the PyTorch iterations only, in the same run). Then a scaling sweep of our layer over n
and B, and the float32 accuracy (float32 inputs solved in float64, the default, and natively
in float32). Run: doubleopt bench qp [-- --quick] [-- --threads 1]
On a machine loaded by other jobs, OpenMP's default spin-waiting makes 2+ threads far slower than 1 (for
torch's batched kernels; each SCS solve is single-threaded, diffcp runs `threads` of them at once): use
--threads 1 or set OMP_WAIT_POLICY=PASSIVE.
The baselines are not dependencies of doubleopt: cvxpylayers comes with pip install 'doubleopt[bench]', qpth with
pip install --no-deps qpth==0.0.18; the study stops at its start, naming the one that is missing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

import doubleopt as do
from doubleopt.bench import Report, conditions, generator, parse_args, seed_all, set_threads, time_call
from doubleopt.bench.baselines import require


@dataclass
class Args:
    """Differentiable QP layers: doubleopt's batched interior point vs qpth and cvxpylayers (forward + backward).

    What is compared: the same random feasible QPs (per-instance matrices, float64), solved cold (no warm start)
    and differentiated (forward + backward of sum(z * w)); solutions are checked to agree within
    ``--agree-tol`` first. Every row is timed the same way: one warm-up, then the median of ``--repeats`` calls in
    the same process, with ``--threads`` threads for torch, BLAS and cvxpylayers' diffcp pool; each row states its
    accuracy setting (our KKT ``--tol``, qpth's eps 1e-12, cvxpylayers' SCS ``--cvx-eps`` and SCS's default).
    Also: our layer without the native kernel, and a scaling sweep of our layer over n and B with the float32
    accuracy.

    Seeds (set once at the top of ``main``): ``--seed`` the QPs (``RandomQP.sample``) and the global generators,
    ``seed + 1`` the headline weights w, ``seed + 2`` the sweep's weights.
    """

    batch: int = 128  # headline batch size B
    n: int = 50  # variables
    m: int = 100  # inequalities
    p: int = 10  # equalities
    threads: int = 2  # torch / BLAS threads
    repeats: int = 3  # timed repeats (median)
    agree_tol: float = 1e-6  # max |z_ours - z_other| before timing
    tol: float = 1e-12  # our KKT tolerance (qpth's default eps is 1e-12; z error ~ sqrt(tol) if degenerate)
    scale_n: list[int] = field(default_factory=lambda: [10, 50, 100, 200])  # sweep over n (B = batch)
    scale_b: list[int] = field(default_factory=lambda: [1, 32, 128, 512])  # sweep over B (n = n)
    skip_cvxpylayers: bool = False  # cvxpylayers is slow (seconds per batch)
    cvx_eps: float = 1e-10  # cvxpylayers' SCS tolerance (eps_abs = eps_rel) of its headline row
    cvx_max_iters: int = 10000  # cvxpylayers' SCS iteration cap of its headline row
    quick: bool = False  # seconds-long smoke run (tiny sizes)
    seed: int = 0  # problem seed
    out: str = "bench_results/qp"  # output folder


def cpu_time(fn, repeats):
    """Median process CPU time (s) of ``fn()`` over ``repeats`` calls (after the warm-up of time_call)."""
    out = []
    for _ in range(repeats):
        c = time.process_time()
        fn()
        out.append(time.process_time() - c)
    return sorted(out)[len(out) // 2]


def make(args, B, n, m, p, dtype=torch.float64):
    x = do.problems.RandomQP(n=n, m=m, p=p, dtype=dtype).sample(B, seed=args.seed)
    return [getattr(x, k) for k in "QqAbGh"]


def ours(tensors, w, tol=1e-12, native=None):
    """doubleopt forward + backward; ``native=False``: the PyTorch iterations only (no C kernel)."""
    leaves = [t.clone().requires_grad_() for t in tensors]
    sol = do.qp_solve(*leaves, tol=tol, throw=False, solver=do.solvers.QP(native=native))
    (sol.y * w).sum().backward()
    return sol.y.detach(), [t.grad for t in leaves], sol


QPTH = "the OptNet baseline of the qp study"
CVXPYLAYERS = "the cvxpylayers baseline of the qp study (--skip-cvxpylayers runs without it)"


def qpth_run(tensors, w):
    qpth = require("qpth.qp", QPTH)
    QPFunction, QPSolvers = qpth.QPFunction, qpth.QPSolvers

    leaves = [t.clone().requires_grad_() for t in tensors]
    Q, q, A, b, G, h = leaves  # qpth's argument order is (Q, p, G, h, A, b)
    z = QPFunction(verbose=-1, solver=QPSolvers.PDIPM_BATCHED)(Q, q, G, h, A, b)
    (z * w).sum().backward()
    return z.detach(), [t.grad for t in leaves]


def cvxpylayers_build(n, m, p):
    cp = require("cvxpy", CVXPYLAYERS)
    CvxpyLayer = require("cvxpylayers.torch", CVXPYLAYERS).CvxpyLayer

    Lq, q, A, b, G, h = (
        cp.Parameter((n, n)),
        cp.Parameter(n),
        cp.Parameter((p, n)),
        cp.Parameter(p),
        cp.Parameter((m, n)),
        cp.Parameter(m),
    )
    z = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(Lq @ z) + q @ z), [A @ z == b, G @ z <= h])
    return CvxpyLayer(prob, parameters=[Lq, q, A, b, G, h], variables=[z])


def cvxpylayers_args(threads: int, eps: float | None = None, max_iters: int | None = None) -> dict:
    """cvxpylayers' solver_args: diffcp's thread pool pinned to ``threads`` (forward and backward), and SCS's
    tolerance (eps_abs = eps_rel = ``eps``) and iteration cap; ``None``: SCS's default."""
    out: dict = {"n_jobs_forward": threads, "n_jobs_backward": threads}
    if eps is not None:
        out.update(eps_abs=eps, eps_rel=eps)
    if max_iters is not None:
        out["max_iters"] = max_iters
    return out


def cvxpylayers_run(layer, tensors, w, solver_args: dict):
    Q, q, A, b, G, h = tensors
    leaves = [
        torch.linalg.cholesky(Q).transpose(-1, -2).clone().requires_grad_(),
        *[t.clone().requires_grad_() for t in (q, A, b, G, h)],
    ]
    (z,) = layer(*leaves, solver_args=dict(solver_args))
    (z * w).sum().backward()
    return z.detach(), [None, *[t.grad for t in leaves[1:]]]


def headline_rows(args: Args, data: list, w: torch.Tensor, report: Report) -> tuple[dict, dict]:
    """Ours (native kernel and PyTorch iterations), qpth and cvxpylayers (two accuracy settings) on the same QPs:
    one row each. Returns ``(median time by method, max |z - z_ours| by baseline)``."""
    t_ours = time_call(lambda: ours(data, w, args.tol), warmup=1, repeats=args.repeats)
    z_ours, g_ours, sol = t_ours.result
    c_ours = cpu_time(lambda: ours(data, w, args.tol), args.repeats)
    rows = {"doubleopt": t_ours.median}
    native = bool(sol.stats.get("native", False))
    report.add_row(
        method="doubleopt (KKT adjoint" + (", native kernel)" if native else ", PyTorch iterations: no C compiler)"),
        accuracy=f"KKT tol {args.tol:g}",
        threads=args.threads,
        fwd_bwd_s=t_ours.median,
        speedup=1.0,
        cpu_s=c_ours,
        cpu_speedup=1.0,
        max_dz=0.0,
        max_dgrad_q=0.0,
        steps=float(sol.num_steps.double().mean()),
    )
    agree = {}

    def add_row(method, accuracy, wall, cpu, z, grads, steps=float("nan")):
        """A row against ours: time ratios, and the largest differences of z and of dL/dq."""
        report.add_row(method=method, accuracy=accuracy, threads=args.threads, fwd_bwd_s=wall,
                       speedup=wall / t_ours.median, cpu_s=cpu, cpu_speedup=cpu / c_ours,
                       max_dz=float((z - z_ours).abs().max()), max_dgrad_q=float((grads[1] - g_ours[1]).abs().max()),
                       steps=steps)

    # ---- ours without the C kernel: the PyTorch iterations only ----
    if native:
        t_py = time_call(lambda: ours(data, w, args.tol, native=False), warmup=1, repeats=args.repeats)
        c_py = cpu_time(lambda: ours(data, w, args.tol, native=False), args.repeats)
        rows["doubleopt (PyTorch)"] = t_py.median
        add_row("doubleopt, PyTorch iterations (QP(native=False))", f"KKT tol {args.tol:g}", t_py.median, c_py,
                t_py.result[0], t_py.result[1], float(t_py.result[2].num_steps.double().mean()))

    # ---- baseline: qpth ----
    z_q, g_q = qpth_run(data, w)
    dz = float((z_q - z_ours).abs().max())
    agree["qpth"] = dz
    if dz > args.agree_tol:
        print(f"qpth disagrees: max |dz| = {dz:.2e} > {args.agree_tol}; timing anyway but flagged")
    t_q = time_call(lambda: qpth_run(data, w), warmup=1, repeats=args.repeats)
    c_q = cpu_time(lambda: qpth_run(data, w), args.repeats)
    rows["qpth"] = t_q.median
    add_row("qpth 0.0.18 (PDIPM batched)", "eps 1e-12 (default)", t_q.median, c_q, z_q, g_q)

    # ---- baseline: cvxpylayers, at our accuracy and at SCS's default ----
    if not args.skip_cvxpylayers:
        layer = cvxpylayers_build(args.n, args.m, args.p)
        settings = {  # row label -> (accuracy column, solver_args)
            f"cvxpylayers (SCS eps {args.cvx_eps:g}, n_jobs {args.threads})": (
                f"SCS eps_abs = eps_rel = {args.cvx_eps:g}, max_iters {args.cvx_max_iters}",
                cvxpylayers_args(args.threads, args.cvx_eps, args.cvx_max_iters),
            ),
            f"cvxpylayers (SCS default accuracy, n_jobs {args.threads})": (
                "SCS defaults: eps_abs = eps_rel = 1e-4, max_iters 100000",
                cvxpylayers_args(args.threads),
            ),
        }
        for i, (label, (accuracy, solver_args)) in enumerate(settings.items()):
            t_c = time_call(
                lambda sa=solver_args: cvxpylayers_run(layer, data, w, sa), warmup=1, repeats=args.repeats
            )
            c_c = cpu_time(lambda sa=solver_args: cvxpylayers_run(layer, data, w, sa), args.repeats)
            z_c, g_c = t_c.result
            dz = float((z_c - z_ours).abs().max())
            agree[label] = dz
            if dz > args.agree_tol:
                print(f"{label} disagrees: max |dz| = {dz:.2e} > {args.agree_tol} (SCS accuracy)")
            rows["cvxpylayers" if i == 0 else "cvxpylayers (default eps)"] = t_c.median
            add_row(label, accuracy, t_c.median, c_c, z_c, g_c)
    return rows, agree


def scaling_sweep(args: Args) -> list[dict]:
    """Our layer over n (B = --batch) and over B (n = --n): time with and without the native kernel, and the
    float32 accuracy (float32 inputs solved in float64, and natively in float32)."""
    from tqdm.auto import tqdm

    gen = generator(args.seed + 2)  # the sweep's weights w
    scaling = []
    grid = [(args.batch, nn) for nn in args.scale_n] + [(bb, args.n) for bb in args.scale_b]
    for bb, nn in tqdm(grid, desc="scaling"):
        d = make(args, bb, nn, 2 * nn, max(1, nn // 5))
        ww = torch.randn(bb, nn, generator=gen, dtype=torch.float64)
        t = time_call(lambda d=d, ww=ww: ours(d, ww, args.tol), warmup=1, repeats=args.repeats)
        t_py = time_call(lambda d=d, ww=ww: ours(d, ww, args.tol, native=False), warmup=1, repeats=args.repeats)
        d32 = [x.float() for x in d]
        z32 = do.qp_solve(*d32, tol=args.tol, throw=False).y.double()  # float32 inputs, float64 IPM
        s32 = do.qp_solve(*d32, tol=1e-4, max_steps=100, throw=False, compute_dtype=torch.float32)
        scaling.append(
            {
                "B": bb,
                "n": nn,
                "m": 2 * nn,
                "p": max(1, nn // 5),
                "fwd_bwd_s": t.median,
                "fwd_bwd_s_pytorch_iterations": t_py.median,
                "steps_mean": float(t.result[2].num_steps.double().mean()),
                "f32_inputs_max_err": float((z32 - t.result[0]).abs().max()),
                "f32_native_max_err": float((s32.y.double() - t.result[0]).abs().max()),
                "f32_native_median_err": float((s32.y.double() - t.result[0]).abs().amax(-1).median()),
                "f32_native_successful": int(s32.successful.sum()),
            }
        )
    return scaling


def plot(args: Args, rows: dict, scaling: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    sn = [r for r in scaling[: len(args.scale_n)]]
    sb = [r for r in scaling[len(args.scale_n) :]]
    axes[0].loglog([r["n"] for r in sn], [r["fwd_bwd_s"] for r in sn], "o-", label="doubleopt")
    axes[0].loglog([r["n"] for r in sn], [r["fwd_bwd_s_pytorch_iterations"] for r in sn], "s--",
                   label="doubleopt, PyTorch iterations")
    axes[0].legend()
    axes[0].set(xlabel="n (m = 2n, p = n/5)", ylabel="fwd+bwd time (s)", title=f"B = {args.batch}")
    axes[1].loglog([r["B"] for r in sb], [r["fwd_bwd_s"] for r in sb], "o-", label="doubleopt")
    axes[1].loglog([r["B"] for r in sb], [r["fwd_bwd_s_pytorch_iterations"] for r in sb], "s--",
                   label="doubleopt, PyTorch iterations")
    axes[1].legend()
    axes[1].set(xlabel="batch B", ylabel="fwd+bwd time (s)", title=f"n = {args.n}")
    names = list(rows)
    axes[2].bar(names, [rows[k] for k in names])
    plt.setp(axes[2].get_xticklabels(), rotation=25, ha="right")
    axes[2].set_yscale("log")
    axes[2].set(ylabel="fwd+bwd time (s)", title=f"B={args.batch}, n={args.n}, m={args.m}, p={args.p}, float64")
    return fig


def main(argv=None):
    args = parse_args(Args, argv)
    require("qpth.qp", QPTH)  # the baselines first: a missing one stops the study before any timing
    if not args.skip_cvxpylayers:
        require("cvxpylayers.torch", CVXPYLAYERS)
    if args.quick:
        args.batch, args.n, args.m, args.p, args.repeats = 8, 10, 20, 3, 1
        args.scale_n, args.scale_b = [5, 10], [1, 8]
    set_threads(args.threads)
    seed_all(args.seed)  # the derived streams (headline and sweep weights) are built from it: see Args
    B, n, m, p = args.batch, args.n, args.m, args.p
    started = conditions(
        dtype="float64",
        batch=B,
        n=n,
        m=m,
        p=p,
        compared=(
            "same QPs, float64, forward + backward, cold starts; every row warm-up + median of repeats; "
            "torch / BLAS threads and cvxpylayers' diffcp thread pool (n_jobs_forward / n_jobs_backward) "
            "all set to `threads`; each row's accuracy setting in its `accuracy` column"
        ),
        threads=args.threads,
        repeats=args.repeats,
    )
    report = Report("qp", out_dir=args.out)
    data = make(args, B, n, m, p)
    w = torch.randn(B, n, generator=generator(args.seed + 1), dtype=torch.float64)

    # ---- ours vs the baselines on the headline batch; then the scaling sweep of ours ----
    load_before = os.getloadavg()[0]
    rows, agree = headline_rows(args, data, w, report)
    scaling = scaling_sweep(args)

    # ---- report ----
    started["load_average_1min"] = [load_before, os.getloadavg()[0]]
    report.save({"conditions": started, "agreement_max_abs_dz": agree, "scaling": scaling}, plot(args, rows, scaling))
    print(report.table())
    print("scaling:", *scaling, sep="\n  ")
    return report


if __name__ == "__main__":
    main()
