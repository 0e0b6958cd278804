"""Native (C) kernels, compiled on first use with the machine's C compiler and loaded with ctypes.

The kernels are optional fast paths: every caller keeps its PyTorch implementation and re-checks what a kernel
returns. They are built once per machine into ``$DOUBLEOPT_CACHE`` (default ``~/.cache/doubleopt``), keyed by
the source, the compiler, the flags and the CPU; the build is atomic (a temporary file renamed into place), so
concurrent first uses are safe. They are built with ``-march=native`` where the CPU is identified: by what the
compiler itself expands ``-march=native`` into (``cc -march=native -### -E``: gcc's ``-march=<cpu> -m<feature>
...``, clang's ``-target-cpu`` / ``-target-feature``), plus ``/proc/cpuinfo`` where it exists. Where neither
identifies the CPU (no ``/proc/cpuinfo`` and a compiler that does not say what ``-march=native`` means), the
kernel is built with portable flags instead, so a cache folder shared by two machines never hands one of them
instructions its CPU lacks. ``DOUBLEOPT_NATIVE=0`` turns them off; without a
C compiler (``$CC`` or ``cc``) they are off and the PyTorch paths run.

The cache is trusted only as far as it is private: a cache folder that other users can write to (group- or
other-writable, or owned by another user) is refused with a warning (the PyTorch paths run), and the SHA-256 of
each library is recorded next to it when it is built (``qp_ipm-<key>.so.sha256``) and checked before a cached
library is loaded: a library that does not match (corrupt, truncated, replaced) or has no record is rebuilt,
never loaded.

The wrapper checks every tensor it hands to C against what the C code reads (dtype ``float64``, CPU, shapes,
row-major layout, and that the memory read lies inside the tensor's storage), and refuses a mismatch with a
``ValueError`` naming the argument.

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
_PORTABLE_FLAGS = [f for f in _FLAGS if f != "-march=native"]
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


def _cpuinfo_key() -> str | None:
    """The CPU's model and feature flags from ``/proc/cpuinfo``, or ``None`` where it cannot be read (macOS, some
    sandboxes) or says nothing about them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    model = next((ln for ln in text.splitlines() if ln.startswith("model name")), "")
    return f"{model}|{flags}" if flags or model else None


def parse_march_native(report: str) -> str | None:
    """The target that ``-march=native`` means, from the driver's ``-###`` output: gcc's expanded ``-march=<cpu>``
    and ``-m<feature>`` / ``--param`` options, clang's ``-target-cpu`` / ``-target-feature`` values; ``None`` when
    the output does not resolve ``native`` to a CPU (then it identifies nothing).

    Example:
        >>> parse_march_native(' /usr/lib/gcc/cc1 -E "-march=skylake" -mmmx -mno-sse4a --param l1-cache-size=32')
        '--param l1-cache-size=32 -march=skylake -mmmx -mno-sse4a'
        >>> parse_march_native('"clang" "-cc1" "-target-cpu" "znver3" "-target-feature" "+avx2"')
        '-target-cpu=znver3 -target-feature=+avx2'
        >>> parse_march_native('cc1 -E "-march=native"') is None
        True
    """
    import shlex

    tokens: list[str] = []
    for line in report.splitlines():
        try:
            tokens += shlex.split(line)
        except ValueError:
            tokens += line.split()
    out: set[str] = set()
    cpu = None
    for i, tok in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok in ("-target-cpu", "-target-feature", "--param"):
            out.add(f"{tok}={nxt}" if tok != "--param" else f"{tok} {nxt}")
            if tok == "-target-cpu" and nxt != "native":
                cpu = nxt
        elif tok.startswith("-march=") or tok.startswith("-mcpu=") or tok.startswith("-mtune="):
            out.add(tok)
            if tok.startswith(("-march=", "-mcpu=")) and not tok.endswith("=native"):
                cpu = tok
        elif tok.startswith("-m") and len(tok) > 2 and "=" not in tok and not tok.startswith("-march"):
            out.add(tok)
    if cpu is None:
        return None
    return " ".join(sorted(out))


def _march_native_target(cc: str) -> str | None:
    """What ``cc`` compiles for under ``-march=native`` on this machine (:func:`parse_march_native` of its
    ``-###`` output), or ``None`` where it does not say."""
    try:
        out = subprocess.run([cc, "-march=native", "-###", "-E", "-x", "c", os.devnull], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return parse_march_native(out.stdout + "\n" + out.stderr)


def build_flags(cc: str) -> tuple[list[str], str]:
    """``(flags, cpu_key)`` for building with ``cc`` here: ``-march=native`` keyed by the compiler's expansion of
    it and ``/proc/cpuinfo`` (either identifies the CPU); portable flags (no ``-march``) keyed ``portable`` where
    neither does, since a ``-march=native`` library under an unidentified key could be reused on another CPU."""
    target = _march_native_target(cc)
    cpuinfo = _cpuinfo_key()
    if target is None and cpuinfo is None:
        return list(_PORTABLE_FLAGS), f"{platform.machine()}|portable"
    return list(_FLAGS), f"{platform.machine()}|{target or ''}|{cpuinfo or ''}"


def compiler() -> str | None:
    """The C compiler the kernels are built with (``$CC``, else ``cc`` or ``gcc`` on the path), or ``None``."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _writable_by_others(path: Path) -> str | None:
    """Why ``path`` could be changed by another user (group/other-writable, another owner), or ``None``."""
    if os.name != "posix":
        return None
    st = path.stat()
    if st.st_mode & 0o022:
        return f"it is writable by other users (mode {oct(st.st_mode & 0o7777)})"
    if st.st_uid not in (os.getuid(), 0):
        return f"it belongs to another user (uid {st.st_uid})"
    return None


def cache_dir() -> Path:
    """The kernels' cache folder (``$DOUBLEOPT_CACHE``, default ``~/.cache/doubleopt``), created private if missing.

    Raises:
        PermissionError: the folder can be written by other users (a library loaded from it could be swapped).
    """
    cache = Path(os.environ.get("DOUBLEOPT_CACHE", Path.home() / ".cache" / "doubleopt"))
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    why = _writable_by_others(cache)
    if why is not None:
        raise PermissionError(f"the cache folder {cache} is refused: {why}, so a library loaded from it could be "
                              f"replaced; run `chmod go-w {cache}` or set DOUBLEOPT_CACHE to a private folder")
    return cache


def _sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _verified(target: Path, record: Path) -> bool:
    """Whether ``target`` exists, is private and has the SHA-256 recorded in ``record`` when it was built."""
    try:
        if _writable_by_others(target) is not None or _writable_by_others(record) is not None:
            return False
        return record.read_text().strip() == _sha256(target)
    except OSError:
        return False


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build() -> ctypes.CDLL | None:
    if os.environ.get("DOUBLEOPT_NATIVE", "1") == "0":
        return None
    cc = compiler()
    if cc is None:
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        flags, cpu = build_flags(cc)
        key_text = "\n".join([_SOURCE.read_text(), cc, version, " ".join(flags), cpu])
        key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
        cache = cache_dir()
        target = cache / f"qp_ipm-{key}.so"
        record = cache / f"qp_ipm-{key}.so.sha256"  # the SHA-256 of target, written when it was built
        if _verified(target, record):
            lib = ctypes.CDLL(str(target))
        else:
            if target.exists() and record.exists():  # (a library without a record: an older cache, rebuilt quietly)
                warnings.warn(f"doubleopt: the cached native QP kernel {target} does not match the hash recorded "
                              "when it was built (or is not private); rebuilding it", RuntimeWarning, stacklevel=3)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
            os.close(fd)
            try:
                out = subprocess.run([cc, *flags, "-o", tmp, str(_SOURCE), "-lm"], capture_output=True,
                                     text=True, timeout=120)
                if out.returncode != 0:
                    warnings.warn("doubleopt: building the native QP kernel failed, using PyTorch:\n"
                                  f"{out.stderr[-2000:]}", RuntimeWarning, stacklevel=3)
                    return None
                os.chmod(tmp, 0o700)
                digest = _sha256(tmp)
                lib = ctypes.CDLL(tmp)  # the file just built and hashed (a rename keeps the loaded file)
                _write_atomic(record, digest + "\n")
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
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
    status, L, lok`` (``status``: 0 converged, 1 iteration budget, 2 Cholesky failed, 3 diverging, 4 non-finite,
    5 out of memory (nothing computed); :func:`unusable` says where ``u, s, lam`` hold no iterate;
    ``polished``: converged by the active-set polish, tried once the residual is ``<= polish_below``; ``L``:
    the Cholesky factor of the reduced matrix at the returned point -- at the scaling ``1_A / sqrt(eps)``,
    ``A = {lam > s}``, where it polished, else ``lam / s`` clipped at ``1 / delta`` -- valid where ``lok``).
    ``start = (u, s, lam)``: a warm start (``s, lam > 0``) instead of the CVXOPT initial point.
    """
    lib = native_lib()
    if lib is None:
        raise RuntimeError("the native QP kernel is not available")
    for name, t in (("c", c), ("g", g)):
        _check_tensor(name, t)
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape (B, {'k' if name == 'c' else 'm'}), got {tuple(t.shape)}")
    (B, k), m = c.shape, g.shape[-1]
    if g.shape[0] != B:
        raise ValueError(f"g must have shape (B, m) = ({B}, m) like c, got {tuple(g.shape)}")
    if k < 1 or m < 1:
        raise ValueError(f"the kernel needs k >= 1 variables and m >= 1 inequalities, got k = {k}, m = {m}")
    P, sP = _matrix("P", P, B, k, k)
    F, sF = _matrix("F", F, B, m, k)
    vecs = [_vector("c", c, (B, k)), _vector("g", g, (B, m))]
    per_instance = zip(("shift", "qn", "hn", "ydiv", "zdiv"), (shift, qn, hn, ydiv, zdiv))
    vecs += [_vector(name, t, (B,)) for name, t in per_instance]
    if start is None:
        u, s, lam = c.new_empty(B, k), c.new_empty(B, m), c.new_empty(B, m)
    else:
        if len(start) != 3:
            raise ValueError(f"start must be a tuple (u, s, lam), got {len(start)} items")
        u, s, lam = (_vector(name, t, shape).clone() for name, t, shape in zip(
            ("start u", "start s", "start lam"), start, ((B, k), (B, m), (B, m))))
    iters = torch.empty(B, dtype=torch.int64)
    polished = torch.empty(B, dtype=torch.int64)
    status = torch.empty(B, dtype=torch.int64)
    L = c.new_empty(B, k, k)
    lok = torch.empty(B, dtype=torch.int64)
    opts = _Options(k, m, max_iter, refine, polish_rounds, int(start is not None), tol, delta, step_fraction, 0.0,
                    0.0, polish_below)
    outputs = (u, s, lam, iters, polished, status, L, lok)
    # what the C code reads and writes from each pointer: the whole batch, rows contiguous, inside the storage
    _check_span("P", P, (B - 1) * sP + k * k)
    _check_span("F", F, (B - 1) * sF + m * k)
    for name, t in zip(("c", "g", "shift", "qn", "hn", "ydiv", "zdiv", "u", "s", "lam", "iters", "polished",
                        "status", "L", "lok"), (*vecs, *outputs)):
        _check_span(name, t, t.numel())
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


NATIVE_CHOLESKY, NATIVE_NONFINITE, NATIVE_NO_MEMORY = 2, 4, 5  # status codes of qp_ipm.c (ST_*)


def unusable(status: Tensor, iters: Tensor, warm: bool) -> Tensor:
    """``(B,)`` bool: instances for which :func:`qp_ipm` returned no iterate (``u, s, lam`` are not initialized or
    not finite): a non-finite iterate, a failed workspace allocation, or a cold start whose very first Cholesky
    factorization failed. The caller hands them back to its PyTorch iterations."""
    bad = (status == NATIVE_NONFINITE) | (status == NATIVE_NO_MEMORY)
    if not warm:
        bad = bad | ((status == NATIVE_CHOLESKY) & (iters == 0))
    return bad


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float64:
        raise ValueError(f"{name} must be float64 (the kernel reads doubles), got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU (the kernel reads host memory), got {t.device}")


def _vector(name: str, t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``t`` checked (float64, CPU, exactly ``shape``) and contiguous, as the kernel reads it."""
    _check_tensor(name, t)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return t.detach().contiguous()


def _matrix(name: str, t: Tensor, B: int, rows: int, cols: int) -> tuple[Tensor, int]:
    """``t`` as ``(B, rows, cols)`` with row-major matrices and its batch stride in elements (``0``: one matrix
    shared by the batch). A ``(1, rows, cols)`` matrix is shared (expanded), so the kernel never steps past it."""
    _check_tensor(name, t)
    if t.dim() != 3 or tuple(t.shape[1:]) != (rows, cols) or t.shape[0] not in (1, B):
        raise ValueError(f"{name} must have shape ({B}, {rows}, {cols}), or (1, {rows}, {cols}) shared by the batch, "
                         f"got {tuple(t.shape)}")
    t = t.detach()
    if B > 1 and (t.shape[0] == 1 or t.stride(0) == 0):  # one matrix for the whole batch
        t0 = t[0] if t[0].is_contiguous() else t[0].contiguous()
        return t0.expand(B, rows, cols), 0
    if not t[0].is_contiguous() or (B > 1 and t.stride(0) != rows * cols):
        t = t.contiguous()
    return t, rows * cols


def _check_span(name: str, t: Tensor, n: int) -> None:
    """The kernel reads ``n`` elements from ``t.data_ptr()``: they must lie inside ``t``'s storage."""
    have = t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()
    if n > have:
        raise ValueError(f"{name}: the kernel would read {n} elements but its storage holds {have} from the start")
