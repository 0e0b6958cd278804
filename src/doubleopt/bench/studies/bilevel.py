"""Bilevel studies (issue 16): hypergradient error vs compute, peak memory vs inner steps, outer convergence
against grid / random search, and our implicit hypergradient against torchopt's.

Problems (float64 throughout, batch size 1):

* problem 1, ``DigitsL2``: multinomial logistic regression on scikit-learn digits (``--digits-train`` training
  and ``--digits-val`` validation points from its train split; 650 inner variables) with one log-L2 weight per
  pixel (64 hyperparameters) or one global weight; outer loss: validation cross-entropy.
* problem 3, ``SparseLogisticL2``: synthetic sparse binary logistic regression (``--sparse-features`` features,
  CSR features with ``--sparse-density`` non-zeros per row, a ground truth with ``--sparse-informative``
  non-zeros) with one log-L2 weight per feature; outer loss: validation logistic loss.

Studies (``--studies``):

* ``error``: relative error ``||g - g_ref|| / ||g_ref||`` of the hypergradient vs its wall time and its
  Hessian-vector products (Grazzi et al. 2020). Reference: ``Implicit(Cholesky())`` (problem 1) /
  ``Implicit(CG(rtol=1e-12))`` (problem 3) at an inner solution solved to ``--tight-tol``. Methods:
  Implicit-CG at several rtol and Neumann k (``scale = 1/L``, L by power iteration on Hessian-vector products
  at the solution; reported) from that solution; Truncated k (k differentiated steps of GD with step 1/L from
  that solution, the solver state re-initialized there);
  Unroll T (T steps of GD with step 1/L, or of L-BFGS, from zero, and backpropagation through them).
  Timed: the hypergradient given the solver's output (implicit, Neumann, truncated: from the stored solution,
  the inner solve is a separate column; unroll: the T forward steps and the backward pass). The problem-3
  layout rows time one Hessian-vector product with the CSR features (stored transpose), the dense features,
  and the CSR features through torch's own backward.
* ``memory``: peak resident memory of one hypergradient vs the number of inner steps T on problem 3: Unroll
  (T GD steps with graph) vs Implicit-CG (T GD steps without graph, then CG). Each configuration runs in a
  fresh Python process (glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 64 KiB, so freed large tensors leave the
  process at once), which after its setup (data, problem, a reference solve, one warm-up hypergradient with
  T = 1 so that the autograd engine's thread and allocator arena already exist) resets the kernel's peak-RSS
  mark (``/proc/self/clear_refs``) and reads its RSS, and after the hypergradient reads the peak (VmHWM); the
  row is the difference. tracemalloc does not see torch's CPU tensors (allocated outside Python's allocator);
  ``ru_maxrss`` alone cannot be reset, so setup's transient peak would hide small differences.
* ``outer``: validation loss vs wall time of ``do.bilevel.optimize`` (L-BFGS inner solver, Adam outer steps,
  the default tolerance schedule, ``--outer-max-inner`` inner steps) with Implicit-CG, Neumann k, Unroll,
  Truncated k and, where ``do.FixedPoint`` exists, FixedPoint k with its adjoint warm-started across outer
  steps (``AdjointMemory``), for the 64-weight and the single-weight problem 1, all from ``--outer-log-l2``,
  against grid search (``--grid-points`` global weights in ``--search-range``, solved to 1e-8, warm-started
  along the grid) and random search (uniform log weights in the same range, cold-started) over the single
  global weight with the wall time of the Implicit-CG 64-weight run as budget. The goal: the 64-weight
  solution's validation loss below the best grid point's (whole grid). Test loss and accuracy on digits' test
  split are reported next to it (the validation set is what the outer loop fits). ``optimize`` starts
  ``do.Unroll()``'s inner solves cold (its derivative is that of the path from the start). A run that raises is
  a row with the error instead of a curve.
* ``torchopt``: on problem 1 (64 weights), one inner solution (L-BFGS to ``--torchopt-inner-tol``) handed to
  both ``do.Implicit(CG(rtol))`` and ``torchopt.diff.implicit.custom_root`` with ``solve_cg(rtol)`` (its
  optimality function: the ``torch.func.grad`` gradient of the same objective, as torchopt's examples write
  it); errors against Cholesky, wall time of the hypergradient at each rtol, peak memory (fresh processes, as
  above). The headline ratio is taken at the loosest rtol at which both are within 1e-6 of the reference.
  torchopt 0.7.3 installs and imports with our torch (the ``bench`` extra); without it the study stops at its
  start with one line naming the extra.

Timing: ``--threads`` torch threads (1), one untimed warm-up call, median of ``--repeats`` calls.

Run: ``doubleopt bench bilevel`` (``-- --quick`` for a smoke run of well under a minute).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import doubleopt as do
from doubleopt.bench import Report, conditions, generator, parse_args, seed_all, set_threads, time_call
from doubleopt.bench.baselines import require
from doubleopt.bilevel import DigitsL2, digits_split
from doubleopt.bilevel.digits import DigitsContext
from doubleopt.bilevel.sparse_logistic import SparseLogisticL2, sparse_logistic_split
from doubleopt.problems._data import load_dataset

F64 = torch.float64


@dataclass
class Args:
    """Bilevel studies: hypergradient error vs compute, peak memory vs inner steps, outer convergence against
    grid / random search, and our implicit hypergradient against torchopt's (``--studies``).

    What is compared: on the same problem, data and inner solution (float64, batch 1, ``--threads`` threads):
    error: each hypergradient method's relative error to a tight reference against its wall time (one warm-up,
    median of ``--repeats``) and its Hessian-vector products; memory: Unroll vs Implicit-CG after the same
    T inner steps, peak RSS of each in a fresh process; outer: ``do.bilevel.optimize`` with each adjoint from
    the same start, against grid and random search over one global weight with the same wall-time budget;
    torchopt: ``do.Implicit(CG(rtol))`` vs torchopt's ``custom_root`` with ``solve_cg(rtol)`` at the same rtol on
    the same solution (error, time, memory).

    Seeds (set once at the top of ``main``): ``--seed`` the global generators and the power iterations'
    start vectors (and the layout rows' HVP vector), ``seed + 1`` the data splits, ``seed + 7`` the random
    search's draws.
    """

    quick: bool = False  # tiny sizes and short method lists: a smoke run of well under a minute
    studies: tuple = ("error", "memory", "outer", "torchopt")  # which studies to run
    digits_train: int = 500  # problem 1: training points (from digits' train split)
    digits_val: int = 300  # problem 1: validation points (disjoint)
    digits_log_l2: float = -3.0  # problem 1 (error, torchopt): mean log-L2 weight (per-feature spread 1)
    sparse_features: int = 10_000  # problem 3: number of features d (= hyperparameters)
    sparse_train: int = 2000  # problem 3: training points
    sparse_val: int = 1000  # problem 3: validation points
    sparse_density: float = 0.01  # problem 3: fraction of non-zero features per row
    sparse_informative: int = 100  # problem 3: non-zeros of the ground-truth weights
    sparse_log_l2: float = -8.0  # problem 3: mean log-L2 weight (per-feature spread 1)
    tight_tol: float = 1e-12  # inner gradient-norm tolerance of the reference solution
    power_iters: int = 100  # power-iteration steps for the largest Hessian eigenvalue L
    cg_rtols: tuple = (1e-1, 1e-2, 1e-4, 1e-6, 1e-8, 1e-10)  # Implicit-CG relative residual tolerances
    neumann_terms: tuple = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500)  # Neumann series terms k
    truncated_steps: tuple = (1, 2, 5, 10, 20, 50, 100, 200)  # Truncated k (GD steps from the solution)
    unroll_steps: tuple = (10, 30, 100, 300, 1000)  # Unroll T (GD steps from zero)
    unroll_lbfgs_steps: tuple = (5, 10, 20, 50, 100)  # Unroll T (L-BFGS steps from zero)
    memory_steps: tuple = (10, 30, 100, 300)  # inner steps T of the memory study
    outer_steps: int = 40  # outer steps of do.bilevel.optimize
    outer_lr: float = 0.2  # Adam learning rate on the log weights
    outer_log_l2: float = -5.0  # starting log weight of the outer runs (the grid's best is near -10)
    outer_max_inner: int = 5000  # inner L-BFGS step budget per outer step
    outer_neumann: int = 20  # Neumann terms in the outer study
    outer_truncated: int = 5  # Truncated k in the outer study (L-BFGS steps)
    grid_points: int = 25  # grid search: global log weights
    search_range: tuple = (-14.0, 2.0)  # grid / random search range of the global log weight
    random_max: int = 200  # random search: at most this many draws (the budget usually stops it first)
    torchopt_rtols: tuple = (1e-4, 1e-6, 1e-8, 1e-10)  # CG rtol of both in the torchopt comparison
    torchopt_inner_tol: float = 1e-10  # inner tolerance of the shared solution
    repeats: int = 5  # timed repeats (median) after one warm-up
    threads: int = 1  # torch threads (fixed; reported)
    seed: int = 0  # data and hyperparameter seed
    out: str = "bench_results/bilevel"  # output folder (one subfolder per study)
    memory_worker: str = ""  # internal: run one memory configuration (JSON) and print its peak RSS


QUICK = dict(
    digits_train=150,
    digits_val=100,
    sparse_features=2000,
    sparse_train=300,
    sparse_val=200,
    sparse_density=0.02,
    sparse_informative=40,
    power_iters=30,
    cg_rtols=(1e-2, 1e-6),
    neumann_terms=(0, 5, 20),
    truncated_steps=(1, 5),
    unroll_steps=(10, 40),
    unroll_lbfgs_steps=(5, 20),
    memory_steps=(5, 40),
    outer_steps=4,
    grid_points=4,
    random_max=4,
    torchopt_rtols=(1e-8,),
    repeats=1,
)


# ================================================================== problems and helpers
@dataclass
class Setup:
    """One bilevel problem with its data, a tightly solved inner solution and its largest Hessian eigenvalue."""

    name: str
    prob: do.Problem
    train: object
    val: object
    outer: object  # y -> validation loss
    y_star: torch.Tensor
    L: float
    inner_time_s: float
    sizes: dict


def make_digits(args, per_feature=True, log_l2=None, spread=1.0) -> tuple[DigitsL2, DigitsContext, DigitsContext]:
    train, val = digits_split(args.digits_train, args.digits_val, seed=args.seed)
    prob = DigitsL2(per_feature=per_feature, log_l2=args.digits_log_l2 if log_l2 is None else log_l2)
    if spread > 0:
        g = generator(args.seed + 1)
        with torch.no_grad():
            prob.log_l2.add_(spread * torch.randn(prob.log_l2.shape, generator=g, dtype=F64))
    return prob, train, val


def make_sparse(args, layout="sparse"):
    train, val, _ = sparse_logistic_split(
        args.sparse_features,
        args.sparse_train,
        args.sparse_val,
        density=args.sparse_density,
        n_informative=args.sparse_informative,
        seed=args.seed,
        layout=layout,
    )
    prob = SparseLogisticL2(args.sparse_features, log_l2=args.sparse_log_l2)
    g = generator(args.seed + 1)
    with torch.no_grad():
        prob.log_l2.add_(torch.randn(prob.log_l2.shape, generator=g, dtype=F64))
    return prob, train, val


def largest_eigenvalue(prob, y, x, iters: int, seed: int = 0) -> float:
    """Largest eigenvalue of the Hessian at ``y`` by power iteration on Hessian-vector products."""
    v = torch.randn(y.shape, generator=generator(seed), dtype=y.dtype)
    lam = 0.0
    for _ in range(iters):
        v = v / v.norm()
        hv = prob.hvp(y, x, v)
        lam = float((hv * v).sum())
        v = hv
    return lam


def build(args, which: str) -> Setup:
    if which == "digits":
        prob, train, val = make_digits(args)
        outer = lambda y: prob.cross_entropy(y, val)  # noqa: E731
        sizes = {"inner_dim": prob.dim, "hyperparameters": 64, "n_train": args.digits_train, "n_val": args.digits_val}
    else:
        prob, train, val = make_sparse(args)
        outer = lambda y: prob.logistic_loss(y, val)  # noqa: E731
        sizes = {
            "inner_dim": prob.dim,
            "hyperparameters": prob.dim,
            "n_train": args.sparse_train,
            "n_val": args.sparse_val,
            "nnz_train": train.features.nnz(),
        }
    start = time.perf_counter()
    with torch.no_grad():
        sol = do.solve(prob, do.LBFGS(), train, tol=args.tight_tol, max_steps=20000)
    inner_time = time.perf_counter() - start
    y_star = sol.y.detach()
    L = largest_eigenvalue(prob, y_star, train, args.power_iters, args.seed)
    sizes["inner_steps_to_tight_tol"] = int(sol.num_steps.max())
    return Setup(which, prob, train, val, outer, y_star, L, inner_time, sizes)


def hypergradient(s: Setup, adjoint, solver, y0, *, max_steps: int = 1, tol: float | None = None) -> torch.Tensor:
    """d outer / d log_l2 through ``do.solve(..., adjoint)`` from ``y0`` (``tol=None``: the tight tolerance)."""
    s.prob.log_l2.grad = None
    sol = do.solve(s.prob, solver, s.train, y0, adjoint=adjoint, max_steps=max_steps, tol=tol, throw=False)
    s.outer(sol.y).backward()
    g = s.prob.log_l2.grad.detach().clone()
    s.prob.log_l2.grad = None
    return g


class _CountHVP(torch.autograd.Function):
    """Identity on ``y``; its backward runs once per backward pass from the gradient to ``y`` (one HVP)."""

    counter = [0]

    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, u):
        _CountHVP.counter[0] += 1
        return u


@contextlib.contextmanager
def counting_hvps(prob):
    """Count the Hessian-vector products (backward passes through the gradient into ``y``) made inside."""
    original = prob.smooth_value_and_grad
    prob.smooth_value_and_grad = lambda y, x: original(_CountHVP.apply(y) if y.requires_grad else y, x)
    _CountHVP.counter[0] = 0
    try:
        yield _CountHVP.counter
    finally:
        del prob.smooth_value_and_grad


def method_list(args, s: Setup) -> list[tuple[str, str, int, object]]:
    """(family, label, parameter, zero-argument hypergradient function) for the error study."""
    gd = do.GD(lr=1.0 / s.L)
    y_star, zeros = s.y_star, torch.zeros_like(s.y_star)
    out = []
    for r in args.cg_rtols:
        out.append(("Implicit-CG", f"Implicit-CG rtol={r:g}", r, lambda r=r: hypergradient(s, imp(r), gd, y_star)))
    for k in args.neumann_terms:
        adj = do.Neumann(terms=k, scale=1.0 / s.L)
        out.append(("Neumann", f"Neumann k={k}", k, lambda a=adj: hypergradient(s, a, gd, y_star)))
    for k in args.truncated_steps:
        adj = do.Truncated(k)
        out.append(("Truncated-GD", f"Truncated k={k}", k, lambda a=adj: hypergradient(s, a, gd, y_star)))
    for T in args.unroll_steps:
        f = lambda T=T: hypergradient(s, do.Unroll(), gd, zeros, max_steps=T, tol=0.0)  # noqa: E731
        out.append(("Unroll-GD", f"Unroll GD T={T}", T, f))
    for T in args.unroll_lbfgs_steps:
        f = lambda T=T: hypergradient(s, do.Unroll(), do.LBFGS(), zeros, max_steps=T, tol=0.0)  # noqa: E731
        out.append(("Unroll-LBFGS", f"Unroll L-BFGS T={T}", T, f))
    if hasattr(do, "FixedPoint"):  # k fixed-point iterations on the adjoint equation from zero, scale 1/L
        for k in args.neumann_terms:
            if k >= 1:
                adj = do.FixedPoint(iterations=k, scale=1.0 / s.L)
                out.append(("FixedPoint", f"FixedPoint k={k}", k, lambda a=adj: hypergradient(s, a, gd, y_star)))
    return out


def imp(rtol: float):
    return do.Implicit(do.CG(rtol=rtol, max_iter=100_000))


def rel_err(g, ref) -> float:
    return float((g - ref).norm() / ref.norm())


# ================================================================== study a: error vs compute
def study_error(args, plt):
    report = Report("bilevel_error", out_dir=Path(args.out) / "error")
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), layout="constrained")
    meta, layout_rows = {}, []
    for pi, which in enumerate(("digits", "sparse")):
        s = build(args, which)
        gd = do.GD(lr=1.0 / s.L)
        ref_adj = do.Implicit(do.Cholesky()) if which == "digits" else imp(1e-12)
        ref_name = "Implicit-Cholesky" if which == "digits" else "Implicit-CG rtol=1e-12"
        ref_t = time_call(lambda a=ref_adj, s=s, gd=gd: hypergradient(s, a, gd, s.y_star), repeats=args.repeats)
        ref = ref_t.result
        meta[which] = {
            "L_power_iteration": s.L,
            "reference": ref_name,
            "reference_time_s": ref_t.median,
            "inner_time_to_tight_tol_s": s.inner_time_s,
            **s.sizes,
        }
        print(f"== error study, {which}: L = {s.L:.4g}, reference {ref_name} {ref_t.median * 1e3:.1f} ms")
        curves: dict[str, list] = {}
        for family, label, param, fn in method_list(args, s):
            t = time_call(fn, repeats=args.repeats)
            with counting_hvps(s.prob) as count:
                fn()
            err = rel_err(t.result, ref)
            report.add_row(
                problem=which,
                method=label,
                family=family,
                param=param,
                rel_error=err,
                time_s=t.median,
                hvps=count[0],
                inner_time_s=0.0 if family.startswith("Unroll") else s.inner_time_s,
            )
            curves.setdefault(family, []).append((t.median, count[0], err))
        for family, pts in curves.items():
            axes[0, pi].loglog([p[0] for p in pts], [max(p[2], 1e-17) for p in pts], "o-", ms=3, label=family)
            axes[1, pi].loglog([max(p[1], 0.5) for p in pts], [max(p[2], 1e-17) for p in pts], "o-", ms=3, label=family)
        title = "problem 1 digits (64 weights)" if which == "digits" else f"problem 3 sparse ({s.prob.dim} weights)"
        for row, xl in ((0, "wall time of the hypergradient (s)"), (1, "Hessian-vector products (0 plotted at 0.5)")):
            axes[row, pi].set_xlabel(xl)
            axes[row, pi].set_ylabel("relative error of the hypergradient (clipped at 100)")
            axes[row, pi].set_ylim(top=100.0)
            axes[row, pi].set_title(f"{title}, ref: {ref_name}")
            axes[row, pi].legend(fontsize=8)
        if which == "sparse":
            layout_rows = layout_timing(args, s)
    print(report.table())
    for r in layout_rows:
        print(r)
    path = report.save(
        {
            "args": asdict(args),
            "problems": meta,
            "hvp_layout_timing": layout_rows,
            "conditions": conditions(dtype="float64", batch=1, warmup=1, repeats=args.repeats),
        },
        fig,
    )
    print(f"wrote {path}")
    return report.rows


def layout_timing(args, s: Setup) -> list[dict]:
    """One Hessian-vector product of problem 3 with each feature layout (same data)."""
    from doubleopt.bilevel.sparse_logistic import FeatureMatrix

    rows = []
    dense_train = make_sparse(args, layout="dense")[1]
    v = torch.randn(s.y_star.shape, generator=generator(args.seed), dtype=F64)

    def hvp_fn(x):
        y = s.y_star.clone().requires_grad_(True)
        g = s.prob.smooth_value_and_grad(y, x)[1]
        return lambda: torch.autograd.grad(g, y, v, retain_graph=True)[0]

    fm = s.train.features
    A_csr = fm.A

    class TorchBackwardCSR(FeatureMatrix):  # the CSR product through torch's own backward (no stored transpose)
        def __init__(self):
            self.shape, self.layout, self.dtype, self.dense, self.A, self.At = (
                fm.shape,
                "csr-torch",
                fm.dtype,
                None,
                A_csr,
                None,
            )

        def matvec(self, w):
            return (A_csr @ w.T).T

        def rmatvec(self, r):
            return (r @ A_csr).reshape(r.shape[0], -1)

    torch_csr = type(s.train)(s.train.labels, TorchBackwardCSR())
    for name, x in (
        ("csr, stored transpose", s.train),
        ("dense (bmm)", dense_train),
        ("csr, torch backward", torch_csr),
    ):
        try:
            t = time_call(hvp_fn(x), repeats=max(3, args.repeats))
            rows.append({"layout": name, "hvp_time_s": t.median})
        except RuntimeError as e:  # an op torch does not support for this layout
            rows.append({"layout": name, "hvp_time_s": float("nan"), "error": str(e)[:200]})
    return rows


# ================================================================== study b: peak memory vs inner steps
def _status_kib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


MEMORY_MEASURE = (
    "peak RSS (VmHWM) of a fresh process during one hypergradient minus its RSS after setup, the peak mark reset "
    "through /proc/self/clear_refs (ru_maxrss where that is unavailable: then a lower bound)"
)


def reset_peak_rss() -> float:
    """Current RSS (MiB), after resetting the kernel's peak-RSS mark to it (Linux: /proc/self/clear_refs = 5);
    elsewhere the process's peak so far (ru_maxrss), so the difference below is then a lower bound."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS") / 1024
    except (OSError, TypeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss() -> float:
    """Peak RSS (MiB) since :func:`reset_peak_rss` (VmHWM), else ru_maxrss."""
    hwm = _status_kib("VmHWM")
    return hwm / 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_worker(args, cfg: dict) -> dict:
    """Runs in a fresh process: setup, then one hypergradient; peak RSS before and after (MiB)."""
    if cfg["problem"] == "digits":
        prob, train, val = make_digits(args)
        outer = lambda y: prob.cross_entropy(y, val)  # noqa: E731
    else:
        prob, train, val = make_sparse(args)
        outer = lambda y: prob.logistic_loss(y, val)  # noqa: E731
    with torch.no_grad():
        sol = do.solve(prob, do.LBFGS(), train, tol=cfg["inner_tol"], max_steps=20000)
    y_star = sol.y.detach()
    method = cfg["method"]

    def run(T):
        prob.log_l2.grad = None
        if method in ("unroll", "implicit"):
            adj = do.Unroll() if method == "unroll" else imp(1e-10)
            gd = do.GD(lr=1.0 / cfg["L"])
            s = do.solve(prob, gd, train, adjoint=adj, max_steps=T, tol=0.0, throw=False)
            outer(s.y).backward()
            return prob.log_l2.grad
        if method == "ours":
            s = do.solve(prob, do.LBFGS(), train, y_star, adjoint=imp(cfg["rtol"]), tol=cfg["inner_tol"])
            outer(s.y).backward()
            return prob.log_l2.grad
        return torchopt_hypergradient(prob, train, outer, y_star, cfg["rtol"])

    run(1)  # warm-up (T = 1): the autograd engine's thread and its allocator arena exist before the reset
    gc.collect()
    before = reset_peak_rss()
    start = time.perf_counter()
    g = run(cfg.get("T", 1))
    elapsed = time.perf_counter() - start
    after = peak_rss()
    return {"rss_before_mib": before, "rss_after_mib": after, "time_s": elapsed, "norm": float(g.norm())}


def run_memory_config(args, cfg: dict) -> dict:
    argv = [sys.executable, "-m", __spec__.name, "--memory-worker", json.dumps(cfg)]  # this study as a module
    for f in ("digits_train", "digits_val", "digits_log_l2", "sparse_features", "sparse_train", "sparse_val"):
        argv += ["--" + f.replace("_", "-"), str(getattr(args, f))]
    for f in ("sparse_density", "sparse_informative", "sparse_log_l2", "seed", "threads"):
        argv += ["--" + f.replace("_", "-"), str(getattr(args, f))]
    # a fixed mmap threshold: glibc then returns every large freed tensor to the system at once instead of
    # raising the threshold and reusing it from the heap, so RSS follows the tensors that are alive
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory worker {cfg} failed:\n{out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["peak_increase_mib"] = res["rss_after_mib"] - res["rss_before_mib"]
    return res


def study_memory(args, plt):
    report = Report("bilevel_memory", out_dir=Path(args.out) / "memory")
    prob, train, _ = make_sparse(args)
    with torch.no_grad():
        y = do.solve(prob, do.LBFGS(), train, tol=1e-8, max_steps=20000).y
    L = largest_eigenvalue(prob, y, train, args.power_iters, args.seed)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method in ("unroll", "implicit"):
        xs, ys = [], []
        for T in args.memory_steps:
            res = run_memory_config(args, {"problem": "sparse", "method": method, "T": T, "L": L, "inner_tol": 1e-8})
            label = "Unroll (GD, graph through T steps)" if method == "unroll" else "Implicit-CG (T GD steps, no graph)"
            report.add_row(method=label, inner_steps=T, **res)
            print(f"memory {method} T={T}: +{res['peak_increase_mib']:.1f} MiB")
            xs.append(T)
            ys.append(res["peak_increase_mib"])
        ax.plot(xs, ys, "o-", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("inner steps T")
    ax.set_ylabel("peak RSS increase of one hypergradient (MiB)")
    ax.set_title(f"problem 3: {args.sparse_features} features, {args.sparse_train} points")
    ax.legend(fontsize=8)
    print(report.table())
    path = report.save(
        {
            "args": asdict(args),
            "L_power_iteration": L,
            "measure": MEMORY_MEASURE,
            "conditions": conditions(dtype="float64", batch=1),
        },
        fig,
    )
    print(f"wrote {path}")
    return report.rows


# ================================================================== study c: outer convergence
def tight_val_and_test(prob, train, val, test) -> tuple[float, float, float]:
    with torch.no_grad():
        y = do.solve(prob, do.LBFGS(), train, tol=1e-8, max_steps=20000, throw=False).y
        pred = prob.logits(y, test).argmax(-1)
        acc = float((pred == test.onehot.argmax(-1)).to(F64).mean())
        return float(prob.cross_entropy(y, val)), float(prob.cross_entropy(y, test)), acc


def digits_test(args) -> DigitsContext:
    X, t = load_dataset("digits", "test", dtype=F64)
    return DigitsContext(X[None], torch.nn.functional.one_hot(t, 10).to(F64)[None])


def outer_methods(args, L: float) -> dict:
    """The adjoints of the outer study (Neumann and FixedPoint scaled by 1/L)."""
    methods = {
        "Implicit-CG": imp(1e-6),
        f"Neumann k={args.outer_neumann}": do.Neumann(terms=args.outer_neumann, scale=1.0 / L),
        "Unroll": do.Unroll(),
        f"Truncated k={args.outer_truncated}": do.Truncated(args.outer_truncated),
    }
    if hasattr(do, "FixedPoint"):  # adjoint warm-started across outer steps
        methods[f"FixedPoint k={args.outer_neumann} (warm adjoint)"] = do.FixedPoint(
            iterations=args.outer_neumann, scale=1.0 / L, memory=do.adjoint.AdjointMemory()
        )
    return methods


def outer_runs(args, test, report: Report, axes) -> tuple[dict, float | None]:
    """``do.bilevel.optimize`` with every adjoint, for the 64-weight and the 1-weight problem 1, each from the
    same start: one row each (a run that raises: a row with the error). Returns ``(curves, budget)``, the budget
    being the 64-weight Implicit-CG run's wall time (``None`` if it failed)."""
    curves, budget = {}, None
    for per_feature in (True, False):
        prob, train, val = make_digits(args, per_feature=per_feature, log_l2=args.outer_log_l2, spread=0.0)
        with torch.no_grad():
            y0 = do.solve(prob, do.LBFGS(), train, tol=1e-8, max_steps=20000).y
        L = largest_eigenvalue(prob, y0, train, args.power_iters, args.seed)
        tag = "64 weights" if per_feature else "1 weight"
        for name, adj in outer_methods(args, L).items():
            prob, train, val = make_digits(args, per_feature=per_feature, log_l2=args.outer_log_l2, spread=0.0)
            try:
                res = do.bilevel.optimize(
                    prob,
                    do.LBFGS(),
                    train,
                    lambda y, p=prob, v=val: p.cross_entropy(y, v),
                    [prob.log_l2],
                    adjoint=adj,
                    outer_steps=args.outer_steps,
                    outer_lr=args.outer_lr,
                    max_inner_steps=args.outer_max_inner,
                )
            except RuntimeError as e:  # e.g. an adjoint whose solution carries no graph (see the docs)
                print(f"outer {tag} {name}: failed: {e}")
                report.add_row(
                    hyperparameters=tag,
                    method=name,
                    outer_steps=0,
                    skipped=0,
                    stopped=f"error: {str(e)[:120]}",
                    wall_time_s=float("nan"),
                    final_val_loss=float("nan"),
                    test_loss=float("nan"),
                    test_accuracy=float("nan"),
                    weights_min_max="",
                )
                continue
            times = torch.tensor([r.time for r in res.history]).cumsum(0).tolist()
            losses = [r.outer_loss for r in res.history]
            val_loss, test_loss, test_acc = tight_val_and_test(prob, train, val, test)
            curves[(tag, name)] = (times, losses)
            if per_feature and name == "Implicit-CG":
                budget = times[-1]
            report.add_row(
                hyperparameters=tag,
                method=name,
                outer_steps=len(res.history),
                skipped=len(res.skipped),
                stopped=res.stopped or "",
                wall_time_s=times[-1],
                final_val_loss=val_loss,
                test_loss=test_loss,
                test_accuracy=test_acc,
                weights_min_max=f"{float(prob.log_l2.detach().min()):.2f}..{float(prob.log_l2.detach().max()):.2f}",
            )
            axes[0 if per_feature else 1].plot(times, losses, "o-", ms=2, label=f"{name} ({tag})")
    return curves, budget


def search_rows(args, budget: float, test, report: Report, axes) -> tuple[list[dict], list[dict]]:
    """Grid and random search over the global weight: one row each (best overall and within the budget)."""
    grid, rand = global_weight_search(args, budget, test)
    for kind, pts in (("grid search", grid), ("random search", rand)):
        best = min(pts, key=lambda p: p["val_loss"])
        in_budget = [p for p in pts if p["cum_time_s"] <= budget] or pts[:1]
        best_b = min(in_budget, key=lambda p: p["val_loss"])
        report.add_row(
            hyperparameters="1 weight",
            method=kind,
            outer_steps=len(pts),
            skipped=0,
            stopped="",
            wall_time_s=pts[-1]["cum_time_s"],
            final_val_loss=best["val_loss"],
            test_loss=best["test_loss"],
            test_accuracy=best["test_accuracy"],
            weights_min_max=f"best {best['log_l2']:.2f}; within budget {best_b['val_loss']:.4g}",
        )
        ts = [p["cum_time_s"] for p in pts]
        bs = torch.tensor([p["val_loss"] for p in pts]).cummin(0).values.tolist()
        for ax in axes:
            ax.step(ts, bs, where="post", label=f"{kind}, best so far (1 weight)")
    return grid, rand


def study_outer(args, plt):
    report = Report("bilevel_outer", out_dir=Path(args.out) / "outer")
    started = conditions(dtype="float64", batch=1, note="outer loss per step at that step's tolerance")
    test = digits_test(args)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")

    # ---- ours: every adjoint; then the baselines (grid and random search) with the same time budget ----
    curves, budget = outer_runs(args, test, report, axes)
    if budget is None:  # the Implicit-CG 64-weight run failed: the longest run's time instead
        budget = max(v[0][-1] for v in curves.values()) if curves else 1.0
    grid, rand = search_rows(args, budget, test, report, axes)

    # ---- the goal, the plot, the report ----
    best_grid = min(p["val_loss"] for p in grid)
    ours = next(
        r["final_val_loss"]
        for r in report.rows
        if r["method"] == "Implicit-CG" and r["hyperparameters"] == "64 weights"
    )
    goal = {"bilevel_64_val_loss": ours, "best_grid_val_loss": best_grid, "met": ours < best_grid}
    print(f"goal (64-weight bilevel below the best grid weight): {goal}")
    for ax, tag in zip(axes, ("64 weights", "1 weight")):
        ax.axvline(budget, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("validation cross-entropy")
        ax.set_title(f"problem 1 (digits), {tag}; dashed: budget")
        ax.legend(fontsize=7)
    print(report.table())
    path = report.save(
        {
            "args": asdict(args),
            "goal_64_below_best_grid": goal,
            "budget_s": budget,
            "grid": grid,
            "random": rand,
            "curves": {f"{k[0]} / {k[1]}": v for k, v in curves.items()},
            "conditions": started,
        },
        fig,
    )
    print(f"wrote {path}")
    return report.rows


def global_weight_search(args, budget: float, test) -> tuple[list[dict], list[dict]]:
    """Grid search (warm-started along the grid) and random search (cold starts) over the global log weight."""
    lo, hi = args.search_range
    prob, train, val = make_digits(args, per_feature=False, spread=0.0)

    def evaluate(log_l2, y0):
        with torch.no_grad():
            prob.log_l2.fill_(log_l2)
            sol = do.solve(prob, do.LBFGS(), train, y0, tol=1e-8, max_steps=20000, throw=False)
            pred = prob.logits(sol.y, test).argmax(-1)
            acc = float((pred == test.onehot.argmax(-1)).to(F64).mean())
            return sol.y, float(prob.cross_entropy(sol.y, val)), float(prob.cross_entropy(sol.y, test)), acc

    out = {"grid": [], "random": []}
    grid_values = torch.linspace(hi, lo, args.grid_points, dtype=F64).tolist()  # strong to weak: warm starts
    gen = generator(args.seed + 7)
    rand_values = (lo + (hi - lo) * torch.rand(args.random_max, generator=gen, dtype=F64)).tolist()
    for kind, values, warm in (("grid", grid_values, True), ("random", rand_values, False)):
        start, y = time.perf_counter(), None
        for v in values:
            y_new, vl, tl, acc = evaluate(v, y if warm else None)
            y = y_new
            elapsed = time.perf_counter() - start
            rec = {"log_l2": v, "val_loss": vl, "test_loss": tl, "test_accuracy": acc, "cum_time_s": elapsed}
            out[kind].append(rec)
            if kind == "random" and elapsed > budget:
                break
    return out["grid"], out["random"]


# ================================================================== study d: against torchopt (or higher)
TORCHOPT = "the implicit-hypergradient baseline of the bilevel study (--studies torchopt)"


def torchopt_hypergradient(prob, train, outer, y_star, rtol: float) -> torch.Tensor:
    """torchopt.diff.implicit.custom_root with solve_cg(rtol) on the same problem and solution."""
    from torch.func import functional_call

    custom_root = require("torchopt.diff.implicit", TORCHOPT).custom_root
    solve_cg = require("torchopt.linear_solve", TORCHOPT).solve_cg

    def optimality(w, log_l2):  # the gradient of the inner objective (torch.func, as torchopt's examples write it)
        return torch.func.grad(lambda v: functional_call(prob, {"log_l2": log_l2}, (v, train)).sum())(w)

    @custom_root(optimality, argnums=1, solve=solve_cg(rtol=rtol, maxiter=100_000))
    def inner(w0, log_l2):
        return y_star.clone()

    lam = prob.log_l2.detach().clone().requires_grad_(True)
    with warnings.catch_warnings():  # torchopt 0.7.3 calls the deprecated functorch.vjp (its FutureWarning)
        warnings.filterwarnings("ignore", message="We've integrated functorch into PyTorch", category=FutureWarning)
        w = inner(y_star.clone(), lam)
        return torch.autograd.grad(outer(w), lam)[0]


def study_torchopt(args, plt):
    report = Report("bilevel_torchopt", out_dir=Path(args.out) / "torchopt")
    torchopt = require("torchopt", TORCHOPT)
    args_inner = args.torchopt_inner_tol
    prob, train, val = make_digits(args)
    outer = lambda y: prob.cross_entropy(y, val)  # noqa: E731
    with torch.no_grad():
        y_star = do.solve(prob, do.LBFGS(), train, tol=args_inner, max_steps=20000).y.detach()
    s = Setup("digits", prob, train, val, outer, y_star, float("nan"), 0.0, {})
    ref = hypergradient(s, do.Implicit(do.Cholesky()), do.LBFGS(), y_star, tol=args_inner)
    times = {}
    for rtol in args.torchopt_rtols:
        fns = {
            "doubleopt Implicit-CG": lambda r=rtol: hypergradient(s, imp(r), do.LBFGS(), y_star, tol=args_inner),
            f"torchopt {torchopt.__version__} custom_root + solve_cg": lambda r=rtol: torchopt_hypergradient(
                prob, train, outer, y_star, r
            ),
        }
        for name, fn in fns.items():
            t = time_call(fn, repeats=args.repeats)
            err = rel_err(t.result, ref)
            mem = run_memory_config(
                args,
                {
                    "problem": "digits",
                    "method": "ours" if name.startswith("doubleopt") else "torchopt",
                    "rtol": rtol,
                    "inner_tol": args_inner,
                },
            )
            times[(name.split()[0], rtol)] = (t.median, err)
            report.add_row(
                method=name, cg_rtol=rtol, rel_error=err, time_s=t.median, peak_increase_mib=mem["peak_increase_mib"]
            )
    both = [r for r in args.torchopt_rtols if times[("doubleopt", r)][1] <= 1e-6 and times[("torchopt", r)][1] <= 1e-6]
    headline = None
    if both:
        r = max(both)
        headline = {"rtol": r, "speedup": times[("torchopt", r)][0] / times[("doubleopt", r)][0], "goal": 5.0}
        headline["met"] = headline["speedup"] >= 5.0
    print(f"torchopt / doubleopt time at the loosest rtol where both are within 1e-6: {headline}")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for lib in ("doubleopt", "torchopt"):
        pts = [times[(lib, r)] for r in args.torchopt_rtols]
        ax.loglog([p[0] for p in pts], [max(p[1], 1e-17) for p in pts], "o-", label=lib)
    ax.axhline(1e-6, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("wall time of the hypergradient (s)")
    ax.set_ylabel("relative error vs Cholesky")
    ax.set_title("problem 1 (64 weights): implicit hypergradient, CG at several rtol")
    ax.legend(fontsize=8)
    print(report.table())
    path = report.save(
        {
            "args": asdict(args),
            "headline": headline,
            "conditions": conditions(
                dtype="float64", batch=1, warmup=1, repeats=args.repeats, torchopt=torchopt.__version__
            ),
        },
        fig,
    )
    print(f"wrote {path}")
    return report.rows


# ================================================================== main
STUDIES = {"error": study_error, "memory": study_memory, "outer": study_outer, "torchopt": study_torchopt}


def main(argv=None):
    args = parse_args(Args, argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    set_threads(args.threads)
    seed_all(args.seed)  # the derived streams (data splits, searches, power iterations): see Args
    if args.memory_worker:
        print(json.dumps(memory_worker(args, json.loads(args.memory_worker))))
        return None
    unknown = [s for s in args.studies if s not in STUDIES]
    if unknown:
        raise ValueError(f"unknown studies {unknown}; choose from {list(STUDIES)}")
    if "torchopt" in args.studies:
        require("torchopt", TORCHOPT)  # the baseline first: if it is missing, the study stops before any work
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {}
    for name in args.studies:
        start = time.perf_counter()
        results[name] = STUDIES[name](args, plt)
        print(f"== study {name}: {time.perf_counter() - start:.1f} s")
    return results


if __name__ == "__main__":
    main()
