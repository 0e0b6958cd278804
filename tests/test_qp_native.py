"""The QP's native (C) kernel: same answers, codes and gradients as the PyTorch iterations, and its fallbacks."""

import functools
import os
import subprocess
import sys
import warnings

import pytest
import torch

import doubleopt as do
from doubleopt.problems import QPStart, RandomQP
from doubleopt.solvers import _native
from doubleopt.solvers.qp import QP

F64 = torch.float64
_OFF = os.environ.get("DOUBLEOPT_NATIVE", "1") == "0"
# skipped only where there is no C compiler (or the kernel is turned off): a compiler whose build fails is a failure
needs_native = pytest.mark.skipif(_native.compiler() is None or _OFF, reason="no C compiler: the native kernel is off")


@needs_native
def test_the_native_kernel_builds_where_a_compiler_is_present():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = _native.available()
    assert ok, f"a C compiler ({_native.compiler()}) is present but the native QP kernel did not build: " + "; ".join(
        str(w.message)[:500] for w in caught
    )


def _both(*tensors, **kw):
    """The same solve with the native kernel and with the PyTorch iterations only."""
    nat = do.qp_solve(*tensors, solver=QP(native=True), **kw)
    ref = do.qp_solve(*tensors, solver=QP(native=False), **kw)
    return nat, ref


@needs_native
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("n,m,p,B", [(12, 24, 3, 16), (10, 20, 0, 8), (30, 60, 6, 5), (7, 14, 2, 1)])
def test_native_matches_the_pytorch_iterations(n, m, p, B, shared):
    x = RandomQP(n=n, m=m, p=p, shared_matrices=shared).sample(B, seed=5)
    nat, ref = _both(x.Q, x.q, x.A, x.b, x.G, x.h, tol=1e-11)
    assert nat.stats.get("native") and "native" not in ref.stats
    assert nat.summary() == ref.summary() == f"{B} successful"
    torch.testing.assert_close(nat.y, ref.y, atol=1e-8, rtol=0)
    torch.testing.assert_close(nat.state.lam, ref.state.lam, atol=1e-6, rtol=0)
    # the same iteration: the step counts agree up to rounding in the last step
    assert int((nat.num_steps - ref.num_steps).abs().max()) <= 1
    assert bool((nat.state.residual <= 1e-11).all())


@needs_native
@pytest.mark.parametrize("p", [0, 4])
def test_native_forward_gives_the_same_gradients(p):
    x = RandomQP(n=10, m=20, p=p).sample(6, seed=2)
    w = torch.randn(6, 10, dtype=F64, generator=torch.Generator().manual_seed(0))
    grads = []
    for native in (True, False):
        leaves = [t.clone().requires_grad_() for t in (x.Q, x.q, x.A, x.b, x.G, x.h)]
        sol = do.qp_solve(*leaves, solver=QP(native=native), tol=1e-12)
        assert bool(sol.stats.get("native", False)) == native
        (sol.y * w).sum().backward()
        grads.append([t.grad for t in leaves])
    for g_nat, g_ref in zip(*grads):
        torch.testing.assert_close(g_nat, g_ref, atol=1e-7, rtol=1e-7)


@needs_native
def test_native_infeasible_and_unbounded_codes_come_from_the_pytorch_certificates():
    Q = torch.stack([torch.eye(2, dtype=F64), torch.eye(2, dtype=F64), torch.diag(torch.tensor([1.0, 0.0], dtype=F64))])
    q = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, -1.0]], dtype=F64)
    G = torch.stack([-torch.eye(2, dtype=F64), torch.tensor([[1.0, 0], [-1, 0]], dtype=F64), -torch.eye(2, dtype=F64)])
    h = torch.tensor([[0.0, 0.0], [-1.0, -1.0], [0.0, 0.0]], dtype=F64)
    nat, ref = _both(Q, q, None, None, G, h, throw=False, max_steps=200)
    codes = [do.RESULTS.successful, do.RESULTS.infeasible, do.RESULTS.unbounded]
    assert nat.result.tolist() == ref.result.tolist() == codes
    assert bool(torch.isfinite(nat.y).all())
    # contradictory bounds are certified within a few steps, as in PyTorch (the kernel hands the instance back)
    n = 4
    Gb = torch.cat([torch.eye(n, dtype=F64), -torch.eye(n, dtype=F64)])
    hb = torch.ones(3, 2 * n, dtype=F64)
    hb[0, :n] = -2.0
    qb = torch.randn(3, n, dtype=F64, generator=torch.Generator().manual_seed(0))
    sol = do.qp_solve(torch.eye(n, dtype=F64), qb, None, None, Gb, hb, throw=False, max_steps=60,
                      solver=QP(native=True))
    assert sol.result.tolist() == [do.RESULTS.infeasible, 0, 0] and int(sol.num_steps[0]) < 20


@needs_native
def test_native_budget_is_part_of_max_steps():
    x = RandomQP(n=20, m=40, p=4).sample(8, seed=1)
    sol = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, throw=False, max_steps=3, tol=1e-12, solver=QP(native=True))
    assert sol.stats.get("native")
    assert set(sol.result.tolist()) == {int(do.RESULTS.max_steps_reached)}
    assert int(sol.num_steps.max()) <= 3
    with pytest.raises(do.SolveError, match="max_steps_reached"):
        do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, max_steps=3, tol=1e-12, solver=QP(native=True))


@needs_native
def test_native_warm_start_from_a_solution():
    fam = do.problems.PortfolioQP(n_assets=20)
    x = fam.sample(16, seed=0)
    cold = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, tol=1e-10, solver=QP(native=True))
    st = cold.state
    start = QPStart(cold.y, st.s, st.lam, st.nu)
    warm, ref = (do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, tol=1e-10, start=start,
                             solver=QP(native=native, warm_start_floor=1e-10)) for native in (True, False))
    assert warm.stats.get("native") and warm.summary() == ref.summary() == "16 successful"
    torch.testing.assert_close(warm.y, ref.y, atol=1e-6, rtol=0)  # same iteration, same start (degenerate: ~sqrt(tol))
    torch.testing.assert_close(warm.y, cold.y, atol=1e-4, rtol=0)  # near-degenerate bounds: z error ~ sqrt(tol)
    assert int((warm.num_steps - ref.num_steps).abs().max()) <= 1
    assert float(warm.num_steps.double().mean()) < float(cold.num_steps.double().mean())


@needs_native
def test_native_threads_split_the_batch_without_changing_results():
    x = RandomQP(n=15, m=30, p=3).sample(9, seed=4)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, tol=1e-11, solver=QP(native=True))
        torch.set_num_threads(2)
        two = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, tol=1e-11, solver=QP(native=True))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one.num_steps, two.num_steps)
    torch.testing.assert_close(one.y, two.y, atol=1e-12, rtol=0)


@needs_native
def test_unroll_and_do_solve_use_the_pytorch_iterations():
    x = RandomQP(n=6, m=12, p=2).sample(3, seed=0)
    leaves = [t.clone().requires_grad_() for t in (x.Q, x.q, x.A, x.b, x.G, x.h)]
    sol = do.qp_solve(*leaves, adjoint=do.Unroll(), tol=1e-10)
    assert "native" not in sol.stats and sol.summary() == "3 successful"
    sol.y.sum().backward()
    assert all(t.grad is not None for t in leaves)
    # a plain do.solve keeps QP's PyTorch iterations unless native=True
    plain = do.solve(do.problems.QPProblem(), QP(skip_tol=1e-10), x, tol=1e-10)
    assert plain.summary() == "3 successful"
    assert not QP(skip_tol=1e-10).uses_native(x)


@needs_native
def test_a_nonfinite_kernel_result_restarts_from_the_pytorch_cold_start(monkeypatch):
    x = RandomQP(n=8, m=16, p=2).sample(4, seed=3)
    real = _native.qp_ipm

    def broken(*args, **kw):  # instance 1 comes back non-finite (status 4)
        u, s, lam, iters, polished, code, L, lok = real(*args, **kw)
        u[1], s[1], lam[1], code[1] = float("nan"), float("nan"), float("nan"), 4
        return u, s, lam, iters, polished, code, L, lok

    monkeypatch.setattr(_native, "qp_ipm", broken)
    sol = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, tol=1e-10, solver=QP(native=True))
    ref = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, tol=1e-10, solver=QP(native=False))
    assert sol.summary() == "4 successful" and int(sol.num_steps[1]) > 0
    torch.testing.assert_close(sol.y, ref.y, atol=1e-8, rtol=0)


def test_native_true_without_the_kernel_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_native, "_lib", None)
    x = RandomQP(n=5, m=10, p=1).sample(2, seed=0)
    with pytest.raises(RuntimeError, match="native QP kernel could not be built"):
        do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, solver=QP(native=True))
    sol = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h)  # the default falls back to PyTorch
    assert "native" not in sol.stats and sol.summary() == "2 successful"


def test_build_cache_and_the_off_switch(tmp_path):
    code = (
        "import doubleopt as do, torch; from doubleopt.problems import RandomQP; "
        "x = RandomQP(n=6, m=12, p=2).sample(3, seed=0); "
        "s = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h); print(s.summary(), s.stats.get('native', False))"
    )
    env = {**os.environ, "DOUBLEOPT_CACHE": str(tmp_path)}
    off = subprocess.run([sys.executable, "-c", code], env={**env, "DOUBLEOPT_NATIVE": "0"}, capture_output=True,
                         text=True, check=True)
    assert off.stdout.split() == ["3", "successful", "False"] and not list(tmp_path.glob("*.so"))
    if not _native.available():
        return
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert on.stdout.split() == ["3", "successful", "True"]
    assert len(list(tmp_path.glob("qp_ipm-*.so"))) == 1 and not list(tmp_path.glob("tmp*"))


_BASE = ["-O1", "-g", "-march=native", "-fopenmp-simd"]
_SANITIZE = {"address": [*_BASE, "-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
             "thread": [*_BASE, "-fsanitize=thread"]}


@functools.lru_cache(maxsize=2)
def _sanitizer_missing(kind: str) -> str | None:
    """Why programs with the ``kind`` sanitizer (``address``: AddressSanitizer + UBSan, ``thread``: ThreadSanitizer)
    cannot be built and run here (no compiler, no sanitizer runtime), or ``None`` where they can. Probed on an empty
    program, so a broken kernel or harness is a failure, never a skip."""
    import tempfile

    cc = _native.compiler()
    if cc is None:
        return "no C compiler"
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "probe.c"), os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write("int main(void) { return 0; }\n")
        try:
            build = subprocess.run([cc, *_SANITIZE[kind], "-o", exe, src, "-lpthread"], capture_output=True,
                                   text=True, timeout=120)
            if build.returncode != 0:
                return f"{cc} cannot link the {kind} sanitizer (no sanitizer runtime): {build.stderr[-300:]}"
            run = subprocess.run([exe], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as err:
            return f"the {kind} sanitizer probe could not run: {err}"
        if run.returncode != 0:
            return f"{kind} sanitizer programs do not run here: {run.stderr[-300:]}"
    return None


def _build_harness(tmp_path, *defines: str, kind: str = "address"):
    """tests/qp_kernel_harness.c (which includes qp_ipm.c) built with the ``kind`` sanitizer and ``defines``."""
    from pathlib import Path

    why = _sanitizer_missing(kind)
    if why is not None:
        pytest.skip(why)
    source = Path(_native.__file__).with_name("qp_ipm.c")
    harness = Path(__file__).with_name("qp_kernel_harness.c")
    exe = tmp_path / ("harness-" + kind + "".join(d.replace("=", "_") for d in defines))
    build = subprocess.run([_native.compiler(), *_SANITIZE[kind], f'-DQP_IPM_SOURCE="{source}"', *defines, "-o",
                            str(exe), str(harness), "-lm", "-lpthread"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr  # the sanitizer runtime exists (probed): a failed build is a bug
    return exe


def test_kernel_is_memory_clean_under_address_sanitizer(tmp_path):
    """The C kernel on awkward sizes (k, m = 1..100, not multiples of the vector width; shared and per-instance
    matrices; cold starts, warm starts from the solutions and from a plain interior point, a slice of the batch, an
    infeasible instance) built with AddressSanitizer + UBSan and the kernel's guard regions (``QP_IPM_SANITIZE``:
    every scratch vector fenced by poisoned memory inside the one workspace allocation): any out-of-bounds access,
    including from one scratch vector into the next, or undefined behaviour fails."""
    exe = _build_harness(tmp_path, "-DQP_IPM_SANITIZE")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


@pytest.mark.parametrize(("bug", "where"), [(1, "solve_iterations"), (2, "transpose_padded"), (3, "polish")])
def test_the_sanitizer_build_catches_a_one_element_overrun_between_scratch_vectors(tmp_path, bug, where):
    """The guards are what catches it: a kernel built with a deliberate bug (``QP_IPM_INJECT_OVERRUN``: it reads and
    writes back element ``n`` of an ``n``-vector: the iterations' ``dl``, the transposed ``F``, the polish's ``up``)
    is reported by AddressSanitizer with the guards (``use-after-poison`` in that function), and is not without them
    (the element lies inside the one allocation), so the memory test above cannot pass for want of guards."""
    guarded = _build_harness(tmp_path, "-DQP_IPM_SANITIZE", f"-DQP_IPM_INJECT_OVERRUN={bug}")
    run = subprocess.run([str(guarded)], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "ERROR: AddressSanitizer: use-after-poison" in run.stderr, run.stdout + run.stderr
    frame0 = next(ln for ln in run.stderr.splitlines() if ln.strip().startswith("#0 "))
    assert f" in {where} " in frame0 and "qp_ipm.c" in frame0, run.stderr
    blind = _build_harness(tmp_path, f"-DQP_IPM_INJECT_OVERRUN={bug}")
    run = subprocess.run([str(blind)], capture_output=True, text=True, timeout=300)
    assert "AddressSanitizer" not in run.stderr and run.stdout.strip() == "ok", run.stdout + run.stderr


def test_concurrent_kernel_calls_are_race_free_under_thread_sanitizer(tmp_path):
    """The kernel from 4 threads at once on disjoint slices of one batch (as the Python wrapper splits it; shared and
    per-instance matrices, cold and warm starts) under ThreadSanitizer: no data race, and the results are bitwise
    those of one sequential call. A kernel with state shared by calls (``QP_IPM_INJECT_RACE``) is reported, so the
    check is live."""
    exe = _build_harness(tmp_path, "-DQP_HARNESS_THREADS=4", kind="thread")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok" and "ThreadSanitizer" not in run.stderr, (
        run.stdout + run.stderr)
    racy = _build_harness(tmp_path, "-DQP_HARNESS_THREADS=4", "-DQP_IPM_INJECT_RACE", kind="thread")
    run = subprocess.run([str(racy)], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "WARNING: ThreadSanitizer: data race" in run.stderr, run.stdout + run.stderr
    assert "in doubleopt_qp_ipm" in run.stderr


@needs_native
def test_native_kernel_in_a_forked_child_and_from_concurrent_threads():
    """The kernel's thread pool is per process (a forked child, e.g. a DataLoader worker, builds its own instead of
    waiting on the parent's dead threads) and per size (concurrent callers with other thread counts keep theirs)."""
    import multiprocessing as mp
    from concurrent.futures import ThreadPoolExecutor

    x = RandomQP(n=8, m=16, p=2).sample(6, seed=0)
    ref = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, solver=QP(native=True))
    assert _native._threads(2).submit(int, 7).result() == 7  # the parent's pool of 2 exists, with live threads
    with mp.get_context("fork").Pool(1) as pool:
        # torch itself stays on one thread in the child (GNU OpenMP cannot be used again after a fork)
        got, y = pool.apply_async(_in_forked_child, ((x.Q, x.q, x.A, x.b, x.G, x.h),)).get(timeout=60)
    assert got == 7
    torch.testing.assert_close(y, ref.y, atol=1e-12, rtol=0)
    with ThreadPoolExecutor(3) as ex:
        ys = list(ex.map(lambda _: do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, solver=QP(native=True)).y, range(6)))
    for y in ys:
        torch.testing.assert_close(y, ref.y, atol=1e-12, rtol=0)


def _in_forked_child(tensors):
    torch.set_num_threads(1)
    return _native._threads(2).submit(int, 7).result(timeout=30), do.qp_solve(*tensors, solver=QP(native=True)).y
