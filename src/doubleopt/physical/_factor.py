r"""Sparse factorization of the reduced Laplacian: symbolic analysis once per network, numeric
refactorization per conductance vector, multi-right-hand-side solves.

During learning only the conductances change, so the sparsity pattern of the reduced Laplacian
:math:`L_{ff}(k)` is fixed for the whole run. The expensive symbolic work (fill-reducing ordering,
elimination tree, storage of the factor) is done once per network, when a backend's :class:`Analysis` is built;
every step then calls :meth:`Analysis.refactor` with the new values (numeric factorization only) and solves all its
right-hand sides in one call. Three backends share this interface:

* ``"pardiso"``: Intel MKL PARDISO through ``pypardiso`` (``pip install 'doubleopt[pardiso]'``, about 1 GB of
  MKL): symmetric positive definite mode, METIS nested-dissection ordering, multithreaded numeric phase.
* ``"qdldl"``: the QDLDL :math:`LDL^\top` factorization (PyPI ``qdldl``, a small compiled wheel; a core
  dependency): AMD ordering and elimination tree once, numeric refactorization in place.
* ``"splu"``: SciPy's SuperLU, always available: the minimum-degree ordering (``MMD_AT_PLUS_A``) is computed
  once; each step factorizes the symmetrically permuted matrix with the natural ordering.

``"auto"`` takes PARDISO when it is installed and the network is large enough for its threads to pay off,
else QDLDL, else SuperLU. A requested backend that is not installed falls back (QDLDL, then SuperLU) with one
warning naming what to install.

Every solve is checked a posteriori by one sparse mat-mat product: a solve whose residual
:math:`\|L X - R\|_\infty` exceeds ``RESIDUAL_TOL`` :math:`\cdot (\|L\|_{\max} \|X\|_{\max} + \|R\|_{\max})`
(a numeric refactorization that lost accuracy, or failed without saying so) is redone with a fresh SuperLU
factorization (the reference path: ``splu(L, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0,
SymmetricMode)``), never returned. Only if that one fails too is :class:`SingularNetworkError` raised.

Memory: before the analysis the factor's size is predicted from two small sample factorizations (breadth-first
balls of the graph) extrapolated by their growth (within a factor 1.4 either way on the networks measured), and
after the analysis it is known from the symbolic factorization. Either is compared with the available memory
(``MemAvailable`` of ``/proc/meminfo``, or the ``memory_limit`` argument) and a network that does not fit
raises :class:`NetworkTooLargeError` before any numeric work.

Example:
    >>> import numpy as np, scipy.sparse as sp
    >>> from doubleopt.physical._factor import LaplacianPattern, LaplacianSolver
    >>> A = sp.csc_matrix(np.array([[2.0, -1, 0], [-1, 2, -1], [0, -1, 2]]))
    >>> solver = LaplacianSolver(LaplacianPattern(A.indptr, A.indices, 3), backend="splu")
    >>> f = solver.factor(A.data)
    >>> np.round(f.solve(np.array([[1.0], [0], [1]])).ravel(), 12).tolist()
    [1.0, 1.0, 1.0]
"""

from __future__ import annotations

import ctypes
import math
import warnings
from dataclasses import dataclass, field
from numbers import Real

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.sparse.csgraph import breadth_first_order

BACKENDS = ("auto", "pardiso", "qdldl", "splu")
"""The names ``backend=`` takes: ``"auto"`` (PARDISO when installed and large enough, else QDLDL), ``"pardiso"``,
``"qdldl"``, ``"splu"``."""

RESIDUAL_TOL = 1e-10
"""Relative residual above which a backend's solve is redone with a fresh SuperLU factorization."""

SINGULAR_TOL = 1e-8
"""Relative residual above which even the reference SuperLU solve is refused (numerically singular system)."""

PARDISO_MIN_NODES = 12_000
"""``backend="auto"`` takes PARDISO (when installed) from this many free nodes on: on 2D Delaunay networks with 2
threads QDLDL's learning step was faster at 4k nodes (5.5 vs 11 ms) and PARDISO's at 16k (13 vs 16 ms), quick
timings on a shared machine."""

PARDISO_COLUMNWISE = 8
"""PARDISO solves up to this many right-hand sides one column at a time (see :meth:`PardisoAnalysis._solve`)."""

SPLU_OPTIONS = {"diag_pivot_thresh": 0.0, "options": {"SymmetricMode": True}}
"""SuperLU options of every factorization here (symmetric mode, diagonal pivots: the matrix is SPD)."""

_INSTALL_HINT = {
    "pardiso": "pip install 'doubleopt[pardiso]' (pypardiso, which brings MKL)",
    "qdldl": "pip install qdldl",
}
_warned: set[str] = set()


class SingularNetworkError(ValueError):
    """Raised when the reduced Laplacian cannot be factorized or a solve gives non-finite voltages."""


class NetworkTooLargeError(MemoryError):
    """Raised before any numeric work when the factorization of a network will not fit in memory."""


# ---- the fixed sparsity pattern ------------------------------------------------------------------------
@dataclass
class LaplacianPattern:
    """The sparsity pattern of a symmetric matrix in CSC form (sorted indices), with its triangles.

    ``upper`` / ``lower`` index the full CSC data array: ``data[upper]`` is the data of the upper triangle in
    CSC order (``up_indptr``, ``up_indices``), ``data[lower]`` that of the lower triangle in CSC order, which
    read as CSR is the upper triangle in CSR order (what PARDISO takes).
    """

    indptr: np.ndarray
    indices: np.ndarray
    n: int
    up_indptr: np.ndarray = field(init=False)
    up_indices: np.ndarray = field(init=False)
    upper: np.ndarray = field(init=False)
    lo_indptr: np.ndarray = field(init=False)
    lo_indices: np.ndarray = field(init=False)
    lower: np.ndarray = field(init=False)

    def __post_init__(self):
        self.indptr = np.asarray(self.indptr, dtype=np.int32)
        self.indices = np.asarray(self.indices, dtype=np.int32)
        cols = np.repeat(np.arange(self.n, dtype=np.int32), np.diff(self.indptr))
        rows = self.indices
        for name, keep in (("up", rows <= cols), ("lo", rows >= cols)):
            pos = np.nonzero(keep)[0]  # CSC order is kept by a mask
            indptr = np.zeros(self.n + 1, dtype=np.int32)
            np.cumsum(np.bincount(cols[pos], minlength=self.n), out=indptr[1:])
            setattr(self, f"{name}_indptr", indptr)
            setattr(self, f"{name}_indices", rows[pos].copy())
            setattr(self, "upper" if name == "up" else "lower", pos)
        if not (np.diff(self.up_indptr) > 0).all() or len(self.upper) != len(self.lower):
            raise ValueError("the pattern needs every diagonal entry and a symmetric structure")

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def matrix(self, data: np.ndarray) -> sp.csc_matrix:
        """The full matrix with this pattern and ``data`` (CSC)."""
        return sp.csc_matrix((data, self.indices, self.indptr), shape=(self.n, self.n))

    def model_values(self) -> np.ndarray:
        """Values of a diagonally dominant SPD matrix with this pattern (off-diagonal -1, diagonal degree + 1):
        what the symbolic analysis factorizes when a backend has no separate symbolic phase."""
        cols = np.repeat(np.arange(self.n), np.diff(self.indptr))
        diag = self.indices == cols
        data = np.where(diag, 0.0, -1.0)
        data[diag] = np.diff(self.indptr) - 1 + 1.0
        return data


# ---- memory --------------------------------------------------------------------------------------------
def _proc_kib(path: str, key: str) -> int | None:
    """The ``key:`` line of a Linux ``/proc`` file (a size in kB) in bytes; ``None`` where there is none."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (``None`` where the platform has no such file)."""
    return _proc_kib("/proc/meminfo", "MemAvailable")


def _check_fits(need: int, memory_limit: float | None, what: str) -> None:
    limit = available_memory() if memory_limit is None else memory_limit
    source = "MemAvailable in /proc/meminfo" if memory_limit is None else "memory_limit"
    if limit is not None and need > limit:
        raise NetworkTooLargeError(
            f"{what} needs about {need / 2**30:.3g} GiB, but {limit / 2**30:.3g} GiB is available ({source}); "
            "use a smaller network, free memory, or pass memory_limit= (bytes; float('inf') turns the check off)"
        )


def peak_rss_reset() -> bool:
    """Reset the process's peak resident memory (Linux: ``VmHWM`` via ``/proc/self/clear_refs``); ``False``
    where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:  # pragma: no cover - not Linux, or not permitted
        return False


def peak_rss() -> int | None:
    """The process's peak resident memory in bytes since the last :func:`peak_rss_reset` (Linux ``VmHWM``)."""
    return _proc_kib("/proc/self/status", "VmHWM")


BYTES_PER_FACTOR_ENTRY = {"pardiso": 20, "qdldl": 16, "splu": 24}
"""Bytes per nonzero of the triangular factor, for the memory prediction: value + index (QDLDL: 64-bit indices;
SuperLU stores L and U, twice the entries of one triangle; PARDISO: what its own report after the analysis came
to per entry on 2D Delaunay networks of 256k and 10^6 nodes)."""


MIN_FILL_GROWTH = 0.25
r"""Smallest exponent the memory prediction extrapolates the fill per node with, :math:`f \propto n^{\alpha}`:
AMD's fill per node on whole 2D Delaunay networks grew faster than on breadth-first samples of them (about
:math:`n^{0.3}` from 12k to 200k nodes), so a flatter trend between two samples is not trusted."""


def predict_factor_nnz(pattern: LaplacianPattern, sample: int = 16_000, seed: int = 0) -> int:
    r"""Predicted nonzeros of the Cholesky factor (one triangle, with the diagonal) under a fill-reducing ordering.

    Two breadth-first balls around a central node of the graph, of ``sample / 4`` and ``sample`` nodes, are
    factorized (QDLDL with AMD
    when installed, else SuperLU with minimum degree); their fill per node, ``f(s)``, is extrapolated to ``n``
    nodes as the power law through both, :math:`f(n) = f(s_2) (n / s_2)^{\alpha}`,
    :math:`\alpha = \max(\log(f(s_2)/f(s_1)) / \log(s_2/s_1),` ``MIN_FILL_GROWTH``:math:`)`. A prediction, not a
    bound: on 2D and 3D Delaunay networks of 12k to 200k nodes it was 0.7 to 1.4 times the factor AMD then found,
    and the size from the symbolic analysis is checked again before any numeric work. Networks of at most
    ``sample`` nodes are factorized whole (exact).
    """
    n = pattern.n
    A = pattern.matrix(pattern.model_values())
    if n <= sample:
        return _fill(A)
    order = breadth_first_order(A, _central_node(A, seed), directed=False, return_predecessors=False)
    if len(order) < sample:  # pragma: no cover - the pattern of a reduced Laplacian is connected per component
        order = np.r_[order, np.setdiff1d(np.arange(n), order)]
    sizes = (sample // 4, sample)
    fills = []
    for s in sizes:
        idx = np.sort(order[:s])
        fills.append(_fill(A[idx][:, idx].tocsc()) / s)
    alpha = max(MIN_FILL_GROWTH, math.log(fills[1] / fills[0]) / math.log(sizes[1] / sizes[0]))
    return int(math.ceil(n * fills[1] * (n / sizes[1]) ** alpha))


def _central_node(A: sp.csc_matrix, seed: int) -> int:
    """A node near the graph's centre: the middle of a long shortest path (from a random node to the farthest
    node, then from there to the farthest again), so the sample balls stay away from the boundary, where the fill
    per node is lower."""
    far = breadth_first_order(A, int(np.random.default_rng(seed).integers(A.shape[0])), directed=False,
                              return_predecessors=False)[-1]
    order, pred = breadth_first_order(A, int(far), directed=False, return_predecessors=True)
    path = [int(order[-1])]
    while pred[path[-1]] >= 0:
        path.append(int(pred[path[-1]]))
    return path[len(path) // 2]


def _fill(A: sp.csc_matrix) -> int:
    """Nonzeros of one triangle of the factor of the SPD matrix ``A`` (diagonal included)."""
    try:
        import qdldl

        L = qdldl.Solver(sp.triu(A, format="csc"), upper=True).factors()[0]
        return int(L.nnz) + A.shape[0]
    except ImportError:
        lu = spla.splu(A, permc_spec="MMD_AT_PLUS_A", **SPLU_OPTIONS)
        return int(lu.L.nnz)


# ---- backends: analyse(pattern) once -> refactor(values) per step -> solve(rhs) --------------------------
class Analysis:
    """A backend's symbolic analysis of one pattern. :meth:`refactor` returns a numeric factor.

    Attributes:
        backend: the backend's name. factor_nnz: nonzeros of the factor (one triangle for symmetric backends).
        memory_bytes: memory of the factor and its workspace, from the symbolic analysis.
    """

    backend: str
    factor_nnz: int
    memory_bytes: int

    def refactor(self, values: np.ndarray) -> NumericFactor:  # pragma: no cover - interface
        raise NotImplementedError


class NumericFactor:
    """A numeric factorization; :meth:`solve` takes an ``(n, K)`` block of right-hand sides."""

    def solve(self, rhs: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class _Stateful(NumericFactor):
    """A factor held inside a stateful solver (QDLDL, PARDISO keep one factorization each): a factor whose
    analysis has since been refactorized with other values refactorizes again before solving."""

    def __init__(self, analysis, values: np.ndarray):
        self.analysis, self.values = analysis, values
        analysis._numeric(values)
        self.generation = analysis.generation

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        if self.analysis.generation != self.generation:
            self.analysis._numeric(self.values)
            self.generation = self.analysis.generation
        return self.analysis._solve(rhs)


class SpluAnalysis(Analysis):
    """SuperLU with the minimum-degree ordering computed once (on the pattern), natural ordering per step."""

    backend = "splu"

    def __init__(self, pattern: LaplacianPattern):
        lu = spla.splu(pattern.matrix(pattern.model_values()), permc_spec="MMD_AT_PLUS_A", **SPLU_OPTIONS)
        self.order = np.argsort(lu.perm_c)  # new index j <-> old index order[j]
        positions = pattern.matrix(np.arange(1, pattern.nnz + 1, dtype=np.float64))
        Ap = positions[self.order][:, self.order].tocsc()
        Ap.sort_indices()
        self.map = Ap.data.astype(np.int64) - 1  # permuted data = values[map]
        self.p_indptr, self.p_indices, self.n = Ap.indptr, Ap.indices, pattern.n
        self.factor_nnz = int(lu.L.nnz + lu.U.nnz)
        self.memory_bytes = BYTES_PER_FACTOR_ENTRY["splu"] * self.factor_nnz // 2 + 64 * pattern.n

    def refactor(self, values: np.ndarray) -> NumericFactor:
        Ap = sp.csc_matrix((values[self.map], self.p_indices, self.p_indptr), shape=(self.n, self.n))
        return _PermutedLU(spla.splu(Ap, permc_spec="NATURAL", **SPLU_OPTIONS), self.order)


class _PermutedLU(NumericFactor):
    def __init__(self, lu, order):
        self.lu, self.order = lu, order

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        X = np.empty_like(rhs)
        X[self.order] = self.lu.solve(np.ascontiguousarray(rhs[self.order]))
        return X


class QdldlAnalysis(Analysis):
    """QDLDL: AMD ordering, elimination tree and factor storage once (on the pattern), ``update`` per step."""

    backend = "qdldl"

    def __init__(self, pattern: LaplacianPattern):
        import qdldl

        self.pattern = pattern
        self.solver = qdldl.Solver(self._upper(pattern.model_values()), upper=True)
        self.factor_nnz = int(self.solver.factors()[0].nnz) + pattern.n
        self.memory_bytes = (
            BYTES_PER_FACTOR_ENTRY["qdldl"] * self.factor_nnz + 24 * len(pattern.upper) + 80 * pattern.n
        )
        self.generation = 0

    def _upper(self, values: np.ndarray) -> sp.csc_matrix:
        p = self.pattern
        return sp.csc_matrix((values[p.upper], p.up_indices, p.up_indptr), shape=(p.n, p.n))

    def refactor(self, values: np.ndarray) -> NumericFactor:
        return _Stateful(self, values)

    def _numeric(self, values: np.ndarray) -> None:
        self.solver.update(self._upper(values), upper=True)
        self.generation += 1

    def _solve(self, rhs: np.ndarray) -> np.ndarray:
        """One QDLDL solve per column; with several threads (PyTorch's count) the columns are spread over a
        thread pool (QDLDL releases the GIL and its solve only reads the factor)."""
        import torch

        X = np.empty_like(rhs)
        cols = [np.ascontiguousarray(rhs[:, j]) for j in range(rhs.shape[1])]
        workers = min(torch.get_num_threads(), len(cols))
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as pool:
                for j, x in enumerate(pool.map(self.solver.solve, cols)):
                    X[:, j] = x
        else:
            for j, b in enumerate(cols):
                X[:, j] = self.solver.solve(b)
        return X


class PardisoError(RuntimeError):
    """PARDISO returned an error code (``-4``: zero pivot, ``-2``: not enough memory, ...)."""


class PardisoAnalysis(Analysis):
    """MKL PARDISO, real symmetric positive definite (``mtype=2``), upper triangle in zero-based CSR.

    Phase 11 (METIS ordering and symbolic factorization) once; phase 22 (numeric) per step; phase 33 (solve,
    all right-hand sides at once). The memory of the numeric phase is PARDISO's own report after phase 11
    (``iparm(16) + iparm(17)`` kB). MKL runs on GNU OpenMP (the runtime PyTorch uses), with PyTorch's thread
    count.
    """

    backend = "pardiso"
    _lib = None

    def __init__(self, pattern: LaplacianPattern):
        lib = self._load()
        self.pattern = pattern
        self.n = pattern.n
        self.indptr = pattern.lo_indptr.astype(np.int32)  # lower CSC == upper CSR
        self.indices = pattern.lo_indices.astype(np.int32)
        self.pt = np.zeros(64, dtype=np.int64)
        self.iparm = np.zeros(64, dtype=np.int32)
        self.iparm[[0, 1, 17, 34]] = [1, 2, -1, 1]  # own iparm; METIS; report nnz(L); zero-based indices
        self.generation = 0
        self._values = np.ascontiguousarray(pattern.model_values()[pattern.lower])
        self._call(11, self._values, np.zeros((self.n, 1), order="F"))
        self.factor_nnz = int(self.iparm[17])
        self.memory_bytes = 1024 * int(max(self.iparm[14], self.iparm[15] + self.iparm[16]))
        self._mkl = lib

    @classmethod
    def _load(cls):
        if cls._lib is None:
            import pypardiso

            lib = pypardiso.PyPardisoSolver().libmkl
            try:  # one OpenMP runtime in the process: MKL on GNU OpenMP, as PyTorch
                lib.MKL_Set_Threading_Layer(3)  # MKL_THREADING_GNU
            except AttributeError:  # pragma: no cover
                pass
            lib.pardiso.restype = None
            lib.pardiso.argtypes = None  # raw pointers (pypardiso typed them for its own calls)
            cls._lib = lib
        return cls._lib

    def _call(self, phase: int, values: np.ndarray, b: np.ndarray) -> np.ndarray:
        import torch

        lib = self._load()
        lib.MKL_Set_Num_Threads(ctypes.c_int(torch.get_num_threads()))
        x = np.zeros_like(b)
        err = ctypes.c_int32(0)
        i32 = ctypes.c_int32
        ptr = lambda a, t=ctypes.c_void_p: a.ctypes.data_as(t)  # noqa: E731
        lib.pardiso(
            ptr(self.pt), ctypes.byref(i32(1)), ctypes.byref(i32(1)), ctypes.byref(i32(2)),
            ctypes.byref(i32(phase)), ctypes.byref(i32(self.n)), ptr(values), ptr(self.indptr), ptr(self.indices),
            None, ctypes.byref(i32(b.shape[1])), ptr(self.iparm), ctypes.byref(i32(0)), ptr(b), ptr(x),
            ctypes.byref(err),
        )
        if err.value != 0:
            raise PardisoError(f"PARDISO phase {phase} failed with error {err.value}")
        return x

    def refactor(self, values: np.ndarray) -> NumericFactor:
        return _Stateful(self, values)

    def _numeric(self, values: np.ndarray) -> None:
        self._values = np.ascontiguousarray(values[self.pattern.lower])
        self.generation += 1
        self._call(22, self._values, np.zeros((self.n, 1), order="F"))

    def _solve(self, rhs: np.ndarray) -> np.ndarray:
        """Phase 33; up to ``PARDISO_COLUMNWISE`` right-hand sides one call each (measured faster: a block of 2
        to 9 columns cost about as much as 10 single solves at 64k nodes), more as one block."""
        if rhs.shape[1] <= PARDISO_COLUMNWISE:
            X = np.empty_like(rhs)
            for j in range(rhs.shape[1]):
                X[:, j] = self._call(33, self._values, np.asfortranarray(rhs[:, j : j + 1]))[:, 0]
            return X
        return np.ascontiguousarray(self._call(33, self._values, np.asfortranarray(rhs)))

    def __del__(self):
        if self._lib is not None and getattr(self, "pt", None) is not None and self.pt.any():
            try:
                self._call(-1, self._values, np.zeros((self.n, 1), order="F"))
            except Exception:  # noqa: BLE001 - never raise from a finalizer
                pass


_ANALYSES = {"pardiso": PardisoAnalysis, "qdldl": QdldlAnalysis, "splu": SpluAnalysis}


def installed(backend: str) -> bool:
    """Whether ``backend``'s package imports."""
    if backend == "splu":
        return True
    try:
        __import__("pypardiso" if backend == "pardiso" else "qdldl")
        return True
    except ImportError:
        return False


def resolve_backend(backend: str, n: int) -> str:
    """The backend that will run for ``backend`` (one of :data:`BACKENDS`) on ``n`` unknowns: ``"auto"`` picks
    by size and availability; a requested backend that is not installed falls back (QDLDL, then SuperLU) with
    one warning naming what to install."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "auto":
        if n >= PARDISO_MIN_NODES and installed("pardiso"):
            return "pardiso"
        backend = "qdldl"
    if installed(backend):
        return backend
    fallback = "qdldl" if backend == "pardiso" and installed("qdldl") else "splu"
    if backend not in _warned:
        _warned.add(backend)
        warnings.warn(
            f"the {backend!r} factorization backend is not installed ({_INSTALL_HINT[backend]}); using "
            f"{fallback!r} instead", RuntimeWarning, stacklevel=4,
        )
    return fallback


@dataclass
class SolverStats:
    """What a :class:`LaplacianSolver` did: its backend, the factor's size and memory (from the analysis),
    and how many solves were redone with SuperLU after failing the residual check."""

    backend: str
    factor_nnz: int = 0
    factor_bytes: int = 0
    predicted_bytes: int = 0
    fallbacks: int = 0


class LaplacianSolver:
    """Symbolic analysis of one pattern with one backend (lazy, once), then :meth:`factor` per values.

    Args:
        pattern: the fixed sparsity pattern.
        backend: one of :data:`BACKENDS`.
        memory_limit: bytes the factorization may use (default: ``MemAvailable``); ``float('inf')`` turns the
            check off.
    """

    def __init__(self, pattern: LaplacianPattern, backend: str = "auto", memory_limit: float | None = None):
        if memory_limit is not None and (isinstance(memory_limit, bool) or not isinstance(memory_limit, Real)
                                         or not memory_limit > 0):
            raise ValueError(f"memory_limit must be a number of bytes > 0 (or None), got {memory_limit!r}")
        self.pattern = pattern
        self.requested = backend
        self.memory_limit = memory_limit
        self.stats = SolverStats(resolve_backend(backend, pattern.n))
        self._analysis: Analysis | None = None

    @property
    def backend(self) -> str:
        return self.stats.backend

    def analysis(self, what: str = "the reduced Laplacian") -> Analysis:
        """The backend's symbolic analysis (computed on first use, after a memory prediction)."""
        if self._analysis is None:
            p = self.pattern
            if self.memory_limit != float("inf") and p.n > 2_000:
                nnz = predict_factor_nnz(p)
                self.stats.predicted_bytes = BYTES_PER_FACTOR_ENTRY[self.backend] * nnz + 64 * p.n
                _check_fits(self.stats.predicted_bytes, self.memory_limit,
                            f"the factorization of {what} ({self.backend}: about {nnz:,} nonzeros in the factor, "
                            f"predicted from sample factorizations)")
            self._analysis = _ANALYSES[self.backend](p)
            self.stats.factor_nnz = self._analysis.factor_nnz
            self.stats.factor_bytes = self._analysis.memory_bytes
            if self.memory_limit != float("inf"):
                _check_fits(self._analysis.memory_bytes, self.memory_limit,
                            f"the factorization of {what} ({self.backend}: {self._analysis.factor_nnz:,} "
                            "nonzeros in the factor, from the symbolic analysis)")
        return self._analysis

    def factor(self, values: np.ndarray, what: str = "the reduced Laplacian", reference: bool = False) -> CheckedFactor:
        """Numeric factorization of the matrix with this pattern and ``values`` (full CSC data); ``reference``:
        skip the backend and factorize with :func:`reference_lu` from scratch (for comparisons)."""
        return CheckedFactor(self, values, what, reference)


def reference_lu(A: sp.csc_matrix):
    """The reference factorization: SuperLU from scratch, minimum degree on :math:`A + A^\\top`, symmetric mode."""
    return spla.splu(A, permc_spec="MMD_AT_PLUS_A", **SPLU_OPTIONS)


class CheckedFactor:
    """A numeric factor whose every solve is residual-checked, and redone with :func:`reference_lu` on failure.

    Raises:
        SingularNetworkError: the reference factorization fails or its solve is not accurate either.
    """

    def __init__(self, solver: LaplacianSolver, values: np.ndarray, what: str, reference: bool = False):
        self.solver, self.values, self.what = solver, values, what
        self.matrix = solver.pattern.matrix(values)
        self._csr = self.matrix.T  # the same matrix (symmetric), as CSR: the faster mat-mat kernel
        self._abs_max = float(np.abs(values).max(initial=0.0))
        self._reference = None
        self._numeric: NumericFactor | None = None
        self._reference_only = reference
        if not reference:
            try:
                self._numeric = solver.analysis(what).refactor(values)
            except (PardisoError, RuntimeError, ValueError):
                pass  # the backend could not factorize: the reference path decides (and raises the clear error)

    @property
    def backend(self) -> str:
        """The backend whose solves are being returned (``"splu-reference"`` after a fallback)."""
        return "splu-reference" if self._reference_only or self._reference is not None else self.solver.backend

    def _residual(self, X: np.ndarray, rhs: np.ndarray) -> tuple[float, float]:
        if not np.isfinite(X).all():
            return math.inf, 1.0
        res = float(np.abs(self._csr @ X - rhs).max(initial=0.0))
        scale = self._abs_max * float(np.abs(X).max(initial=0.0)) + float(np.abs(rhs).max(initial=0.0))
        return res, scale

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solve :math:`A X = R` for ``R`` of shape ``(n,)`` or ``(n, K)`` (all columns at once)."""
        R = np.asarray(rhs, dtype=np.float64)
        vec = R.ndim == 1
        R2 = R[:, None] if vec else R
        if R2.shape[1] == 0:
            return np.zeros_like(R)
        if self._reference is None and self._numeric is not None:
            try:
                X = self._numeric.solve(R2)
            except PardisoError:
                X = np.full_like(R2, np.nan)
            res, scale = self._residual(X, R2)
            if res <= RESIDUAL_TOL * scale:
                return X[:, 0] if vec else X
        X = self._reference_solve(R2)
        return X[:, 0] if vec else X

    def _reference_solve(self, R: np.ndarray) -> np.ndarray:
        first = self._reference is None
        if first:
            try:
                self._reference = reference_lu(self.matrix)
            except RuntimeError as err:  # "Factor is exactly singular"
                raise SingularNetworkError(f"{self.what} is singular ({err})") from err
        X = self._reference.solve(np.ascontiguousarray(R))
        res, scale = self._residual(X, R)
        if not np.isfinite(X).all():
            raise SingularNetworkError(f"a solve with {self.what} gave non-finite values (numerically singular)")
        if not res <= SINGULAR_TOL * scale:
            raise SingularNetworkError(
                f"a solve with {self.what} is numerically singular (residual {res:.3g} vs scale {scale:.3g})"
            )
        if first and not self._reference_only:
            self.solver.stats.fallbacks += 1
            if self._numeric is not None and "refactor" not in _warned:
                _warned.add("refactor")
                warnings.warn(
                    f"a {self.solver.backend!r} refactorization of {self.what} failed its residual check; the "
                    "solve was redone with a fresh SuperLU factorization (counted in the solver's stats.fallbacks)",
                    RuntimeWarning, stacklevel=5,
                )
        return X
