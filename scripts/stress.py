"""Stress run of doubleopt's solvers: long loops in several threads and processes at once (issue 18).

Every worker process first computes a reference result for each case single-threaded (``torch.set_num_threads(1)``,
one Python thread), then runs the cases in a loop from ``--threads`` Python threads at once (with
``--torch-threads`` intra-op threads, which is also how many threads the native QP kernel splits a batch over)
for ``--seconds`` after a warm-up, and checks every result against its reference:

- result codes and step counts exactly, tensors (solutions, multipliers, gradients) to ``RTOL`` relative to
  ``1 + max|reference|`` (rounding; in practice they are bitwise equal);
- the references of all processes against those of process 0 (same tolerance);
- memory: the resident set size of each process after a warm-up (every thread has run every case twice) and at
  the end; a growth beyond ``--max-growth-mib`` fails the run (a leak of one small workspace per call, over the
  thousands of calls of a run, would cross it).

The cases: ``qp_solve`` through the native kernel (per-instance and shared matrices, a batch split over the
kernel's thread pool), ``qp_solve`` with the KKT backward, ``qp_solve`` warm-started, ``do.solve`` with L-BFGS
(logistic regression) and with Newton plus the implicit gradient (quadratics), and Sinkhorn (entropic OT on the
sphere). With ``--fresh-cache`` every process starts from the same empty kernel cache at once (the build race); each
process also makes its first use of the kernel from all its threads at once.

Exit code 0 when everything matched and memory stayed within the bound, 1 otherwise (2: bad arguments). Example::

    .venv/bin/python scripts/stress.py --threads 4 --processes 2 --seconds 60

``--inject leak`` / ``--inject mismatch`` check the checker: they leak 8 MiB per loop in one thread, or corrupt one
result, and the run must then fail.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor

RTOL = 1e-12  # tensors against the single-threaded reference, relative to 1 + max|reference|
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------------------------
# the cases: setup() builds the inputs once per process, run(inputs) returns {name: tensor}


def _cases():
    import torch

    import doubleopt as do
    from doubleopt.problems import QPStart, QuadraticContext
    from doubleopt.solvers import Sinkhorn
    from doubleopt.solvers.qp import QP

    def qp_native(shared: bool, B: int):
        def setup():
            return do.problems.RandomQP(n=12, m=24, p=3, shared_matrices=shared).sample(B, seed=1 + B)

        def run(x):
            sol = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, tol=1e-10)
            return {"y": sol.y, "lam": sol.state.lam, "result": sol.result, "num_steps": sol.num_steps}

        return setup, run

    def qp_backward():
        x = do.problems.RandomQP(n=10, m=20, p=2).sample(6, seed=7)
        return x

    def qp_backward_run(x):
        leaves = [t.clone().requires_grad_() for t in (x.Q, x.q, x.A, x.b, x.G, x.h)]
        sol = do.qp_solve(*leaves, tol=1e-11)
        w = torch.linspace(-1.0, 1.0, sol.y.shape[-1], dtype=sol.y.dtype)
        (sol.y * w).sum().backward()
        return {"y": sol.y.detach(), "result": sol.result, **{f"grad {n}": t.grad for n, t in zip("QqAbGh", leaves)}}

    def qp_warm():
        fam = do.problems.PortfolioQP(n_assets=20)
        x = fam.sample(8, seed=3)
        q = x.q + 0.1 * torch.randn(x.q.shape, dtype=x.q.dtype, generator=torch.Generator().manual_seed(3))
        near = do.qp_solve(x.Q, q, x.A, x.b, x.G, x.h, tol=1e-10)  # a neighbouring problem's solution
        return x, QPStart(near.y, near.state.s, near.state.lam, near.state.nu)

    def qp_warm_run(inputs):
        x, start = inputs
        sol = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, tol=1e-10, start=start, solver=QP(warm_start_floor=1e-10))
        return {"y": sol.y, "result": sol.result, "num_steps": sol.num_steps}

    def lbfgs():
        fam = do.problems.LogisticRegression(n_features=5, n_points=100, dtype=torch.float64)
        return fam, fam.sample(8, seed=4)

    def lbfgs_run(inputs):
        fam, x = inputs
        sol = do.solve(fam, do.LBFGS(), x, tol=1e-7, max_steps=500)
        return {"y": sol.y, "result": sol.result, "num_steps": sol.num_steps}

    def newton():
        fam = do.problems.Quadratic(dim=6, dtype=torch.float64)
        return fam, fam.sample(8, seed=5)

    def newton_run(inputs):
        fam, x = inputs
        b = x.b.clone().requires_grad_()
        sol = do.solve(fam, do.Newton(), QuadraticContext(x.A, b), tol=1e-10, adjoint=do.Implicit())
        sol.y.pow(2).sum().backward()
        return {"y": sol.y.detach(), "result": sol.result, "grad b": b.grad}

    def sinkhorn():
        fam = do.problems.SphereOT(n_points=40, eps=0.05)
        return fam, fam.sample(8, seed=6)

    def sinkhorn_run(inputs):
        fam, x = inputs
        sol = do.solve(fam, Sinkhorn(), x, tol=1e-9, max_steps=5000)
        return {"y": sol.y, "result": sol.result, "num_steps": sol.num_steps}

    return {
        "qp_solve (native kernel)": qp_native(False, 8),
        "qp_solve (shared matrices, B=32)": qp_native(True, 32),
        "qp_solve + KKT backward": (qp_backward, qp_backward_run),
        "qp_solve (warm start)": (qp_warm, qp_warm_run),
        "do.solve L-BFGS (logistic)": (lbfgs, lbfgs_run),
        "do.solve Newton + Implicit": (newton, newton_run),
        "Sinkhorn (sphere OT)": (sinkhorn, sinkhorn_run),
    }


def _difference(got: dict, ref: dict) -> tuple[float, str | None]:
    """The largest relative difference of ``got`` from ``ref`` and, where it is a mismatch, what differs."""
    import torch

    worst = 0.0
    for name, r in ref.items():
        g = got.get(name)
        if g is None or g.shape != r.shape or g.dtype != r.dtype:
            return float("inf"), f"{name}: {None if g is None else (tuple(g.shape), g.dtype)} vs {tuple(r.shape)}"
        if not r.is_floating_point():
            if not torch.equal(g, r):
                return float("inf"), f"{name}: {g.tolist()} vs {r.tolist()}"
            continue
        d = float((g - r).abs().max()) / (1.0 + float(r.abs().max())) if r.numel() else 0.0
        if not d <= RTOL:  # NaN too
            return d, f"{name}: differs by {d:.1e} (relative)"
        worst = max(worst, d)
    return worst, None


def _rss_bytes() -> int:
    """This process's resident set size (Linux: /proc/self/statm; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


# ---------------------------------------------------------------------------------------------------------------
# one worker process


def worker(index: int, opts: dict) -> dict:
    """Run the stress loop in this process; returns its statistics (never raises: errors are reported)."""
    out = {"index": index, "errors": [], "cases": {}, "references": {}, "rss": None, "native": None, "loops": 0}
    try:
        _worker(index, opts, out)
    except Exception:  # reported, and the run fails
        out["errors"].append(f"process {index}: {traceback.format_exc()}")
    return out


def _worker(index: int, opts: dict, out: dict) -> None:
    import torch

    from doubleopt.solvers import _native

    torch.set_num_threads(1)
    n_threads = opts["threads"]
    # first use of the kernel from every thread at once (with --fresh-cache, every process at once too)
    barrier = threading.Barrier(n_threads)
    libs = [None] * n_threads

    def first_use(t):
        barrier.wait()
        libs[t] = _native.native_lib()

    ts = [threading.Thread(target=first_use, args=(t,)) for t in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if any(lib is not libs[0] for lib in libs):
        out["errors"].append(f"process {index}: concurrent first uses of the native kernel loaded different objects")
    out["native"] = libs[0] is not None

    cases = _cases()
    inputs = {name: setup() for name, (setup, _) in cases.items()}
    refs = {name: {k: v.detach().clone() for k, v in run(inputs[name]).items()} for name, (_, run) in cases.items()}
    out["references"] = {name: {k: v.numpy() for k, v in ref.items()} for name, ref in refs.items()}
    stats = {name: {"runs": 0, "mismatches": 0, "worst": 0.0, "first": None} for name in cases}
    lock = threading.Lock()
    torch.set_num_threads(opts["torch_threads"])
    leak: list[bytearray] = []
    warm = threading.Barrier(n_threads + 1)
    deadline = [float("inf")]
    names = list(cases)

    def loop(t: int):
        try:
            rounds = 0
            while True:
                if rounds == 2:
                    warm.wait()  # everyone has run every case twice: the memory baseline is taken now
                if rounds >= 2 and time.monotonic() >= deadline[0]:
                    return
                for j in range(len(names)):
                    name = names[(j + t) % len(names)]  # threads start on different cases
                    got = cases[name][1](inputs[name])
                    if "mismatch" in opts["inject"] and t == 0 and rounds == 2 and j == 0:
                        got = {k: (v + 1e-6 if v.is_floating_point() else v) for k, v in got.items()}
                    worst, what = _difference(got, refs[name])
                    with lock:
                        s = stats[name]
                        s["runs"] += 1
                        if what is None:
                            s["worst"] = max(s["worst"], worst)
                        else:
                            s["mismatches"] += 1
                            s["first"] = s["first"] or f"process {index} thread {t}: {what}"
                if "leak" in opts["inject"] and t == 0 and rounds >= 2:
                    leak.append(bytearray(b"\x01") * (8 * MIB))  # every byte written: resident
                rounds += 1
        except threading.BrokenBarrierError:
            return
        except Exception:
            with lock:
                out["errors"].append(f"process {index} thread {t}: {traceback.format_exc()}")
            warm.abort()

    threads = [threading.Thread(target=loop, args=(t,), name=f"stress-{t}") for t in range(n_threads)]
    for th in threads:
        th.start()
    try:
        warm.wait()
    except threading.BrokenBarrierError:
        pass
    gc.collect()
    rss0 = _rss_bytes()
    deadline[0] = time.monotonic() + opts["seconds"]
    peak = rss0
    while any(th.is_alive() for th in threads):
        time.sleep(0.2)
        peak = max(peak, _rss_bytes())
    for th in threads:
        th.join()
    gc.collect()
    rss1 = _rss_bytes()
    out["rss"] = (rss0, max(peak, rss1), rss1)
    out["cases"] = stats
    out["loops"] = sum(s["runs"] for s in stats.values())
    leak.clear()


# ---------------------------------------------------------------------------------------------------------------
# the run and its summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=4, help="Python threads per process (default 4)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the loop after warm-up (default 60)")
    parser.add_argument("--torch-threads", type=int, default=2,
                        help="torch intra-op threads in the loop, also the native kernel's (default 2)")
    parser.add_argument("--max-growth-mib", type=float, default=32.0,
                        help="fail when a process's resident memory grows more than this after warm-up (default 32)")
    parser.add_argument("--fresh-cache", action="store_true",
                        help="start every process from one new, empty native-kernel cache (the build race)")
    parser.add_argument("--inject", choices=["leak", "mismatch"], action="append", default=[],
                        help="check the checker (repeatable): leak 8 MiB per loop in one thread, or corrupt one result")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)
    for name in ("threads", "processes", "torch_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.seconds > 0 or not args.max_growth_mib > 0:
        parser.error("--seconds and --max-growth-mib must be > 0")

    def say(text: str) -> None:
        if not args.quiet:
            print(text, flush=True)

    opts = {"threads": args.threads, "seconds": args.seconds, "torch_threads": args.torch_threads,
            "inject": args.inject}
    cache = tempfile.TemporaryDirectory(prefix="doubleopt-stress-") if args.fresh_cache else None
    env_before = os.environ.get("DOUBLEOPT_CACHE")
    if cache is not None:
        os.chmod(cache.name, 0o700)
        os.environ["DOUBLEOPT_CACHE"] = cache.name  # inherited by the spawned workers
    say(f"stress: {args.processes} processes x {args.threads} threads, {args.seconds:g} s each after warm-up ...")
    t0 = time.monotonic()
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.processes, mp_context=ctx) as pool:
            futures = [pool.submit(worker, i, opts) for i in range(args.processes)]
            results = []
            for f in futures:
                try:
                    results.append(f.result())
                except Exception as err:  # a worker that died (a crash in C would show here)
                    results.append({"index": len(results), "errors": [f"worker process failed: {err!r}"],
                                    "cases": {}, "references": {}, "rss": None, "native": None, "loops": 0})
                say(f"  process {results[-1]['index']} done")
    finally:
        if cache is not None:
            if env_before is None:
                os.environ.pop("DOUBLEOPT_CACHE", None)
            else:
                os.environ["DOUBLEOPT_CACHE"] = env_before
            cache.cleanup()
    failures = summarize(results, args, time.monotonic() - t0)
    return 1 if failures else 0


def summarize(results: list[dict], args, wall: float) -> list[str]:
    """Print the summary; return the failures (empty: the run passed)."""
    import numpy as np

    failures: list[str] = []
    native = {r["native"] for r in results if r["native"] is not None}
    print(f"doubleopt stress run: {args.processes} process(es) x {args.threads} thread(s), {args.seconds:g} s "
          f"(torch threads {args.torch_threads}, native QP kernel {'on' if native == {True} else 'off'}"
          f"{', fresh cache' if args.fresh_cache else ''}), {wall:.0f} s wall")
    names = list(dict.fromkeys(n for r in results for n in r["cases"]))
    print(f"{'case':36s} {'runs':>7s} {'mismatches':>10s} {'max rel. diff':>13s}")
    for name in names:
        runs = sum(r["cases"][name]["runs"] for r in results if name in r["cases"])
        bad = sum(r["cases"][name]["mismatches"] for r in results if name in r["cases"])
        worst = max(r["cases"][name]["worst"] for r in results if name in r["cases"])
        print(f"{name:36s} {runs:7d} {bad:10d} {worst:13.1e}")
        if bad:
            first = next(r["cases"][name]["first"] for r in results if r["cases"].get(name, {}).get("first"))
            failures.append(f"{name}: {bad} mismatches with the single-threaded reference (first: {first})")
        if runs == 0:
            failures.append(f"{name}: never ran")
    # the references of every process against process 0's
    refs = [r["references"] for r in results if r["references"]]
    differ = []
    for i, other in enumerate(refs[1:], start=1):
        for name, ref in refs[0].items():
            for key, v in ref.items():
                w = other.get(name, {}).get(key)
                same = w is not None and w.shape == v.shape and (
                    np.array_equal(w, v) if not np.issubdtype(v.dtype, np.floating)
                    else float(np.abs(w - v).max(initial=0.0)) <= RTOL * (1 + float(np.abs(v).max(initial=0.0))))
                if not same:
                    differ.append(f"{name}: process {i}'s single-threaded reference ({key}) differs from process 0's")
    failures += differ
    print(f"single-threaded references of the {len(refs)} process(es): {'DIFFER' if differ else 'identical'}")
    mem = []
    for r in results:
        if r["rss"] is None:
            continue
        rss0, peak, rss1 = (v / MIB for v in r["rss"])
        growth = rss1 - rss0
        mem.append(f"process {r['index']}: {rss0:.0f} -> {rss1:.0f} MiB ({growth:+.1f}, peak {peak:.0f})")
        if growth > args.max_growth_mib or peak - rss0 > 2 * args.max_growth_mib:
            failures.append(f"process {r['index']}: resident memory grew {growth:+.1f} MiB (peak {peak - rss0:+.1f}) "
                            f"after warm-up, over the bound of {args.max_growth_mib:g} MiB")
    print(f"memory after warm-up -> end (bound +{args.max_growth_mib:g} MiB): " + "; ".join(mem))
    for r in results:
        failures += r["errors"]
    if len(native) > 1:
        failures.append("the native kernel loaded in some processes and not in others")
    print(f"result: {'FAILED' if failures else 'OK'} ({sum(r['loops'] for r in results)} solves checked)")
    for f in failures[:20]:
        print("  " + f.rstrip().replace("\n", "\n    "))
    return failures


if __name__ == "__main__":
    sys.exit(main())
