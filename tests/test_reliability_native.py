"""The native QP kernel's Python side (issue 18): the CPU is identified by what the compiler makes of -march=native
(portable flags where nothing identifies it), and instances the kernel returned no iterate for (a failed workspace
allocation, a failed first factorization) go back to the PyTorch iterations."""

import shutil

import pytest
import torch

import doubleopt as do
from doubleopt.problems import RandomQP
from doubleopt.solvers import _native
from doubleopt.solvers.qp import QP

GCC = (
    'COLLECT_GCC_OPTIONS=\'-march=native\' \'-E\'\n /usr/lib/gcc/x86_64-linux-gnu/12/cc1 -E -quiet /dev/null '
    '"-march=rocketlake" -mmmx -mavx2 -mno-sse4a --param "l1-cache-size=48" -mtune=rocketlake\n'
)
CLANG = '"/usr/bin/clang" "-cc1" "-triple" "x86_64-pc-linux-gnu" "-E" "-target-cpu" "znver3" "-target-feature" "+avx2"'


def test_parse_march_native():
    assert _native.parse_march_native(GCC) == (
        "--param l1-cache-size=48 -march=rocketlake -mavx2 -mmmx -mno-sse4a -mtune=rocketlake"
    )
    assert _native.parse_march_native(CLANG) == "-target-cpu=znver3 -target-feature=+avx2"
    other = GCC.replace("rocketlake", "skylake")
    assert _native.parse_march_native(other) != _native.parse_march_native(GCC)
    # a driver that passes native through unresolved (or says nothing) identifies no CPU
    assert _native.parse_march_native(' cc1 -E "-march=native" -mmmx') is None
    assert _native.parse_march_native('"clang" "-cc1" "-target-cpu" "native"') is None
    assert _native.parse_march_native("") is None


def test_no_cpuinfo_and_no_report_builds_portable(monkeypatch):
    monkeypatch.setattr(_native, "_cpuinfo_key", lambda: None)
    monkeypatch.setattr(_native, "_march_native_target", lambda cc: None)
    flags, key = _native.build_flags("cc")
    assert "-march=native" not in flags and key.endswith("|portable")
    assert flags == [f for f in _native._FLAGS if f != "-march=native"]


def test_the_compiler_report_keys_the_cache(monkeypatch):
    monkeypatch.setattr(_native, "_cpuinfo_key", lambda: None)  # macOS, a sandbox
    keys = set()
    for report in (GCC, GCC.replace("rocketlake", "skylake"), CLANG):
        monkeypatch.setattr(_native, "_march_native_target", lambda cc, r=report: _native.parse_march_native(r))
        flags, key = _native.build_flags("cc")
        assert "-march=native" in flags
        keys.add(key)
    assert len(keys) == 3  # another CPU, another library
    # /proc/cpuinfo alone still identifies the CPU
    monkeypatch.setattr(_native, "_march_native_target", lambda cc: None)
    monkeypatch.setattr(_native, "_cpuinfo_key", lambda: "model|flags fpu sse")
    flags, key = _native.build_flags("cc")
    assert "-march=native" in flags and "flags fpu sse" in key


@pytest.mark.skipif(_native.compiler() is None, reason="no C compiler")
def test_this_machines_compiler_says_what_native_means():
    cc = _native.compiler()
    if shutil.which(cc) is None and not cc.startswith("/"):
        pytest.skip("CC is not an executable path")
    target = _native._march_native_target(cc)
    if target is None:
        pytest.skip(f"{cc} does not expand -march=native here")
    assert "-march=native" not in target and ("-march=" in target or "-target-cpu=" in target)


@pytest.mark.skipif(_native.compiler() is None, reason="no C compiler")
def test_portable_build_is_cached_under_its_own_key_and_solves(tmp_path, monkeypatch):
    monkeypatch.setenv("DOUBLEOPT_CACHE", str(tmp_path))
    monkeypatch.setattr(_native, "_cpuinfo_key", lambda: None)
    monkeypatch.setattr(_native, "_march_native_target", lambda cc: None)
    monkeypatch.setattr(_native, "_lib", False)
    assert _native.available()
    (lib,) = tmp_path.glob("qp_ipm-*.so")
    x = RandomQP(n=6, m=12, p=2).sample(3, seed=0)
    nat = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, solver=QP(native=True), tol=1e-10)
    ref = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, solver=QP(native=False), tol=1e-10)
    assert nat.stats.get("native") and nat.summary() == "3 successful"
    torch.testing.assert_close(nat.y, ref.y, atol=1e-8, rtol=0)
    # a native build (CPU identified) gets another file
    monkeypatch.setattr(_native, "_march_native_target", lambda cc: "-march=somecpu")
    monkeypatch.setattr(_native, "_lib", False)
    assert _native.available()
    assert len(list(tmp_path.glob("qp_ipm-*.so"))) == 2 and lib.exists()


def test_unusable():
    status = torch.tensor([0, 1, 2, 2, 3, 4, 5])
    iters = torch.tensor([5, 9, 0, 3, 4, 2, 0])
    assert _native.unusable(status, iters, warm=False).tolist() == [False, False, True, False, False, True, True]
    # with a warm start the kernel's u, s, lam hold the start when the first factorization fails
    assert _native.unusable(status, iters, warm=True).tolist() == [False, False, False, False, False, True, True]


@pytest.mark.skipif(_native.compiler() is None, reason="no C compiler")
@pytest.mark.parametrize(("code", "what"), [(5, "no memory"), (2, "first factorization")])
def test_instances_without_an_iterate_go_back_to_pytorch(monkeypatch, code, what):
    x = RandomQP(n=8, m=16, p=2).sample(4, seed=3)
    real = _native.qp_ipm

    def failing(*args, **kw):  # instances 1 and 2: nothing computed, the outputs are whatever memory held
        u, s, lam, iters, polished, status, L, lok = real(*args, **kw)
        for b in (1, 2):
            u[b], s[b], lam[b], L[b] = 1e308, -3.0, float("nan"), float("nan")
            status[b], iters[b], polished[b], lok[b] = code, 0, False, False
        return u, s, lam, iters, polished, status, L, lok

    monkeypatch.setattr(_native, "qp_ipm", failing)
    sol = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, tol=1e-10, solver=QP(native=True))
    ref = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, tol=1e-10, solver=QP(native=False))
    assert sol.summary() == "4 successful", what
    assert int(sol.num_steps[1]) > 0 and int(sol.num_steps[2]) > 0  # the PyTorch iterations solved them
    torch.testing.assert_close(sol.y, ref.y, atol=1e-8, rtol=0)


FAILING_ALLOC = r"""
#include <stdlib.h>
#include <stdint.h>
#include <stdio.h>
static void *fail_alloc(size_t alignment, size_t size) { (void)alignment; (void)size; return NULL; }
#define aligned_alloc fail_alloc
#include QP_IPM_SOURCE
int main(void) {
    Options o = {.k = 2, .m = 2, .max_iter = 10, .refine = 0, .polish_rounds = 0, .warm = 0, .tol = 1e-8,
                 .delta = 1e-10, .step_fraction = 0.99, .polish_below = 0.0};
    double P[4] = {1, 0, 0, 1}, c[4] = {1, 1, 1, 1}, F[4] = {1, 0, 0, 1}, g[4] = {1, 1, 1, 1};
    double one[2] = {1, 1}, u[4], s[4], lam[4], L[8];
    int64_t iters[2] = {-1, -1}, polished[2] = {-1, -1}, status[2] = {-1, -1}, lok[2] = {-1, -1};
    doubleopt_qp_ipm(&o, 0, 2, P, 0, c, F, 0, g, one, one, one, one, one, u, s, lam, iters, polished, status, L, lok);
    printf("%lld %lld %lld %lld\n", (long long)status[0], (long long)status[1], (long long)iters[0], (long long)lok[1]);
    return 0;
}
"""


@pytest.mark.skipif(_native.compiler() is None, reason="no C compiler")
def test_the_c_kernel_reports_a_failed_allocation_with_its_own_code(tmp_path):
    """The kernel built with an allocator that always fails: every instance gets status 5 (no memory), 0 steps and
    no factor, which :func:`unusable` hands back to PyTorch (it used to report 1, a spent budget, over garbage)."""
    import subprocess
    from pathlib import Path

    source = Path(_native.__file__).with_name("qp_ipm.c")
    harness = tmp_path / "fail.c"
    harness.write_text(FAILING_ALLOC)
    exe = tmp_path / "fail"
    build = subprocess.run([_native.compiler(), "-O1", f'-DQP_IPM_SOURCE="{source}"', "-o", str(exe), str(harness),
                            "-lm"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    status0, status1, iters0, lok1 = map(int, out.stdout.split())
    assert status0 == status1 == _native.NATIVE_NO_MEMORY and iters0 == 0 and lok1 == 0
    assert bool(_native.unusable(torch.tensor([status0]), torch.tensor([iters0]), warm=True).all())
