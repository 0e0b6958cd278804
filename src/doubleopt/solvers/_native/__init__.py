"""Native (C) kernels, compiled on first use with the machine's C compiler and loaded with ctypes.

The kernels are optional fast paths: every caller keeps its PyTorch implementation and re-checks what a kernel
returns. They are built once per machine into ``$DOUBLEOPT_CACHE`` (default ``~/.cache/doubleopt``), keyed by
the source, the compiler and the CPU (they are built with ``-march=native``); the build is atomic (a temporary
file renamed into place), so concurrent first uses are safe. ``DOUBLEOPT_NATIVE=0`` turns them off; without a
C compiler (``$CC`` or ``cc``) they are off and the PyTorch paths run.

A kernel runs on slices of the batch in several threads at once (ctypes releases the GIL during the call):
as many as ``torch.get_num_threads()``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

_SOURCE = Path(__file__).with_name("qp_ipm.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None | bool = False  # False: not tried yet; None: unavailable
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (process id, threads) -> pool (a forked child makes its own)


class _Options(ctypes.Structure):
    _fields_ = [
        ("k", ctypes.c_int64),
        ("m", ctypes.c_int64),
        ("max_iter", ctypes.c_int64),
        ("refine", ctypes.c_int64),
        ("polish_rounds", ctypes.c_int64),
        ("warm", ctypes.c_int64),
        ("tol", ctypes.c_double),
        ("delta", ctypes.c_double),
        ("step_fraction", ctypes.c_double),
        ("ydiv_limit", ctypes.c_double),
        ("zdiv_limit", ctypes.c_double),
        ("polish_below", ctypes.c_double),
    ]


def _cpu_key() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
        model = next((ln for ln in text.splitlines() if ln.startswith("model name")), "")
    except OSError:
        flags = model = ""
    return f"{platform.machine()}|{model}|{flags}"


def _build() -> ctypes.CDLL | None:
    if os.environ.get("DOUBLEOPT_NATIVE", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        key = hashlib.sha256(
            "\n".join([_SOURCE.read_text(), cc, version, " ".join(_FLAGS), _cpu_key()]).encode()
        ).hexdigest()[:16]
        cache = Path(os.environ.get("DOUBLEOPT_CACHE", Path.home() / ".cache" / "doubleopt"))
        cache.mkdir(parents=True, exist_ok=True)
        target = cache / f"qp_ipm-{key}.so"
        if not target.exists():
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
            os.close(fd)
            out = subprocess.run([cc, *_FLAGS, "-o", tmp, str(_SOURCE), "-lm"], capture_output=True, text=True,
                                 timeout=120)
            if out.returncode != 0:
                os.unlink(tmp)
                warnings.warn(f"doubleopt: building the native QP kernel failed, using PyTorch:\n{out.stderr[-2000:]}",
                              RuntimeWarning, stacklevel=3)
                return None
            os.replace(tmp, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as err:
        warnings.warn(f"doubleopt: the native QP kernel is unavailable ({err}), using PyTorch", RuntimeWarning,
                      stacklevel=3)
        return None
    f = lib.doubleopt_qp_ipm
    f.restype = None
    f.argtypes = [ctypes.POINTER(_Options), ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p, ctypes.c_int64,
                  ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 14
    return lib


def native_lib() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; ``None`` where they are unavailable or turned off."""
    global _lib
    if _lib is False:
        with _lock:
            if _lib is False:
                _lib = _build()
    return _lib  # type: ignore[return-value]


def available() -> bool:
    return native_lib() is not None


def _threads(n: int) -> ThreadPoolExecutor:
    """A pool of ``n`` threads for this process (kept: pools of other sizes stay usable by concurrent callers)."""
    key = (os.getpid(), n)
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(n, thread_name_prefix="doubleopt-native")
        return pool


def qp_ipm(P: Tensor, c: Tensor, F: Tensor, g: Tensor, shift: Tensor, qn: Tensor, hn: Tensor, ydiv: Tensor,
           zdiv: Tensor, *, tol: float, delta: float, step_fraction: float, refine: int, max_iter: int,
           polish_below: float = 0.0, polish_rounds: int = 2, start: tuple[Tensor, Tensor, Tensor] | None = None):
    r"""Run the C interior point on ``min 1/2 u'Pu + c'u s.t. Fu <= g`` per instance (float64).

    ``P (B, k, k)``, ``F (B, m, k)``: per instance, or shared (stride 0 over the batch); every row contiguous.
    ``c (B, k)``, ``g (B, m)``, ``shift, qn, hn, ydiv, zdiv (B,)``. Returns ``u, s, lam, iters, polished,
    status, L, lok`` (``status``: 0 converged, 1 iteration budget, 2 Cholesky failed, 3 diverging, 4 non-finite;
    ``polished``: converged by the active-set polish, tried once the residual is ``<= polish_below``; ``L``:
    the Cholesky factor of the reduced matrix at the returned point -- at the scaling ``1_A / sqrt(eps)``,
    ``A = {lam > s}``, where it polished, else ``lam / s`` clipped at ``1 / delta`` -- valid where ``lok``).
    ``start = (u, s, lam)``: a warm start (``s, lam > 0``) instead of the CVXOPT initial point.
    """
    lib = native_lib()
    if lib is None:
        raise RuntimeError("the native QP kernel is not available")
    B, m, k = F.shape

    def rows(t: Tensor) -> Tensor:  # contiguous rows; the batch stride may be 0 (shared)
        if t.stride(-1) == 1 and t.stride(-2) == t.shape[-1] and (t.stride(0) in (0, t[0].numel()) or B == 1):
            return t
        return t.contiguous()

    P, F = rows(P.detach()), rows(F.detach())
    vecs = [v.detach().contiguous() for v in (c, g, shift, qn, hn, ydiv, zdiv)]
    if start is None:
        u, s, lam = c.new_empty(B, k), c.new_empty(B, m), c.new_empty(B, m)
    else:
        u, s, lam = (t.detach().clone(memory_format=torch.contiguous_format) for t in start)
    iters = torch.empty(B, dtype=torch.int64)
    polished = torch.empty(B, dtype=torch.int64)
    status = torch.empty(B, dtype=torch.int64)
    L = c.new_empty(B, k, k)
    lok = torch.empty(B, dtype=torch.int64)
    opts = _Options(k, m, max_iter, refine, polish_rounds, int(start is not None), tol, delta, step_fraction, 0.0,
                    0.0, polish_below)
    sP = 0 if (B > 1 and P.stride(0) == 0) else k * k
    sF = 0 if (B > 1 and F.stride(0) == 0) else m * k
    outputs = (u, s, lam, iters, polished, status, L, lok)
    args = [P.data_ptr(), sP, vecs[0].data_ptr(), F.data_ptr(), sF] + [t.data_ptr() for t in (*vecs[1:], *outputs)]
    n_threads = max(1, min(torch.get_num_threads(), B))
    if n_threads == 1:
        lib.doubleopt_qp_ipm(ctypes.byref(opts), 0, B, *args)
    else:
        bounds = [B * i // n_threads for i in range(n_threads + 1)]
        futures = [_threads(n_threads).submit(lib.doubleopt_qp_ipm, ctypes.byref(opts), b0, b1, *args)
                   for b0, b1 in zip(bounds[:-1], bounds[1:]) if b1 > b0]
        for f in futures:
            f.result()
    return u, s, lam, iters, polished.bool(), status, L, lok.bool()
