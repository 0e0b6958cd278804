r"""Resistor networks: graph, boundary conditions, outputs, and the sparse free / clamped / nudged states.

A network has ``n`` nodes and ``E`` edges :math:`e = (a_e, b_e)` with conductances :math:`k_e > 0`. The
physics (the *inner* optimization) settles the node voltages :math:`V` to the minimizer of the dissipated
power

.. math:: P(V) = \tfrac12 \sum_e k_e (\Delta V_e)^2 - \sum_i I_i V_i, \qquad \Delta V_e = V_{a_e} - V_{b_e},

under the boundary conditions: *source* nodes are held at imposed voltages (``input_kind="voltage"``) or
receive imposed currents :math:`I` (``input_kind="current"``), *ground* nodes are held at 0. Writing
:math:`D` for the ``(E, n)`` incidence matrix and splitting the nodes into free (f) and fixed (F) ones
(Dirichlet elimination), the free state solves the sparse symmetric positive definite system

.. math:: L_{ff} V_f = I_f - L_{fF} V_F, \qquad L = D^\top \operatorname{diag}(k) D .

The outputs are linear functionals :math:`O = M V` (node voltages or voltage drops across node pairs,
"target edges"). With :math:`Z = L_{ff}^{-1} M_f^\top` (``m`` extra right-hand sides) and
:math:`S = M_f Z` (``m x m``), every state the learning rules need comes from the *same* factorization of
:math:`L_{ff}`:

* clamped (outputs held at :math:`c`, a Lagrange multiplier = currents injected at the outputs):
  :math:`V^C = V^F + Z S^{-1}(c - M V^F)`;
* nudged (minimizer of :math:`P + \beta\, \tfrac12\|MV - T\|^2`):
  :math:`V^\beta = V^F - \beta Z (I + \beta S)^{-1}(M V^F - T)`;
* adjoint (exact gradient): :math:`\lambda = Z (M V^F - T)`,
  :math:`\partial C / \partial k_e = -\overline{\Delta V_e \Delta\lambda_e}`.

One sparse LU (SciPy SuperLU, symmetric mode, minimum-degree ordering on :math:`L + L^\top`) is computed
per conductance vector and reused for the ``B`` samples of a batch and the ``m`` output responses.

References:
    Stern, Hexner, Rocks & Liu, "Supervised learning in physical networks: from machine learning to
    learning machines", PRX 11, 021045 (2021). Dillavou, Stern, Liu & Durian, "Demonstration of
    decentralized physics-driven learning", PR Applied 18, 014040 (2022). Scellier & Bengio,
    "Equilibrium propagation", Front. Comput. Neurosci. (2017).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from ._factor import (  # noqa: F401 - the errors are re-exported
    BACKENDS,
    CheckedFactor,
    LaplacianPattern,
    LaplacianSolver,
    NetworkTooLargeError,
    SingularNetworkError,
)

ArrayLike = Any  # Tensor | np.ndarray | sequence


class FloatingNodesError(ValueError):
    """Raised when some nodes are connected to no source and no ground (their voltage is undetermined).

    Attributes:
        components: the floating connected components, each a sorted list of node ids.
    """

    def __init__(self, components: list[list[int]], kind: str):
        self.components = components
        shown = "; ".join(
            f"{{{', '.join(map(str, c[:8]))}{', ...' if len(c) > 8 else ''}}} ({len(c)} nodes)"
            for c in components[:5]
        )
        more = f" and {len(components) - 5} more" if len(components) > 5 else ""
        anchor = (
            "source or ground node" if kind == "voltage" else "ground node (current inputs need a ground)"
        )
        super().__init__(
            f"the network has {len(components)} floating component(s) connected to no {anchor}, so their "
            f"voltages are undetermined: {shown}{more}. Connect them, ground them, or remove them."
        )


def _np(a: ArrayLike, dtype=np.float64) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype)


def _node_ids(a: ArrayLike | None, name: str, n_nodes: int) -> np.ndarray:
    if a is None:
        return np.zeros(0, dtype=np.int64)
    arr = _np(a, np.float64).reshape(-1)
    if arr.size and (np.any(arr != np.round(arr))):
        raise ValueError(f"{name} must be integer node ids, got {arr.tolist()[:8]}")
    ids = arr.astype(np.int64)
    bad = ids[(ids < 0) | (ids >= n_nodes)]
    if bad.size:
        raise ValueError(f"{name} has node ids {bad.tolist()[:8]} outside [0, {n_nodes})")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{name} lists a node twice: {ids.tolist()[:16]}")
    return ids


class ResistorNetwork:
    r"""A resistor network with sources, ground and outputs (see the module docstring for the math).

    Args:
        n_nodes: number of nodes ``n``.
        edges: ``(E, 2)`` integer node pairs; parallel edges are allowed, self-loops are not.
        k: ``(E,)`` conductances, all finite and in ``[k_min, k_max]`` (default: ones, moved into that range).
        sources: input node ids (``n_in`` of them).
        ground: node ids held at 0 V.
        output_nodes: node ids whose voltages are outputs.
        output_edges: ``(m_e, 2)`` node pairs ``(a, b)`` whose drops ``V_a - V_b`` are outputs
            ("target edges").
            The outputs are ``output_nodes`` first, then ``output_edges``.
        input_kind: ``"voltage"`` (sources held at the input voltages, Dirichlet) or ``"current"``
            (the inputs are currents injected at the source nodes; needs a ground).
        k_min: the lower end of the range learning keeps conductances in. ``k`` must lie in
            ``[k_min, k_max]``: a conductance outside is refused (not clipped), since every learning step
            would clip it silently (widen the range instead, or clip ``k`` yourself). :meth:`with_k` applies
            the same rule.
        k_max: the upper end of that range.

    Raises:
        FloatingNodesError: a connected component holds no source / ground node (names the nodes).
        ValueError: bad ids, ``k <= 0``, non-finite or outside ``[k_min, k_max]`` (names the edges), outputs
            on fixed nodes.

    Example:
        >>> import torch, doubleopt as do
        >>> g = do.physical.grid_graph(3, 3)
        >>> net = do.physical.ResistorNetwork(g.n_nodes, g.edges, sources=[0], ground=[8], output_nodes=[4])
        >>> V = net.free_state(torch.tensor([[1.0]], dtype=torch.float64))
        >>> round(float(net.outputs(V)[0, 0]), 6)  # the centre of a uniform grid sits at half the drop
        0.5
    """

    def __init__(
        self,
        n_nodes: int,
        edges: ArrayLike,
        k: ArrayLike | None = None,
        *,
        sources: ArrayLike,
        ground: ArrayLike | None = None,
        output_nodes: ArrayLike | None = None,
        output_edges: ArrayLike | None = None,
        input_kind: str = "voltage",
        k_min: float = 1e-3,
        k_max: float = 1e3,
        backend: str = "auto",
        memory_limit: float | None = None,
    ):
        if isinstance(n_nodes, bool) or int(n_nodes) != n_nodes or n_nodes < 2:
            raise ValueError(f"n_nodes must be an integer >= 2, got {n_nodes!r}")
        n = int(n_nodes)
        e = _np(edges, np.float64)
        if e.ndim != 2 or e.shape[1] != 2 or e.shape[0] == 0:
            raise ValueError(f"edges must have shape (E, 2) with E >= 1, got {tuple(e.shape)}")
        if np.any(e != np.round(e)):
            raise ValueError("edges must hold integer node ids")
        e = e.astype(np.int64)
        bad = np.nonzero(((e < 0) | (e >= n)).any(1))[0]
        if bad.size:
            raise ValueError(
                f"edges {bad.tolist()[:8]} reference nodes outside [0, {n}): {e[bad[:4]].tolist()}"
            )
        loops = np.nonzero(e[:, 0] == e[:, 1])[0]
        if loops.size:
            raise ValueError(f"edges {loops.tolist()[:8]} are self-loops (a == b); remove them")
        if input_kind not in ("voltage", "current"):
            raise ValueError(f"input_kind must be 'voltage' or 'current', got {input_kind!r}")
        if not (0 < k_min < k_max < np.inf):
            raise ValueError(f"need 0 < k_min < k_max < inf, got k_min={k_min}, k_max={k_max}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        if memory_limit is not None and (isinstance(memory_limit, bool) or not isinstance(memory_limit, Real)
                                         or not memory_limit > 0):
            raise ValueError(f"memory_limit must be a number of bytes > 0 (or None), got {memory_limit!r}")
        self.backend, self.memory_limit = backend, memory_limit
        self.n_nodes, self.edges, self.input_kind = n, e, input_kind
        self.k_min, self.k_max = float(k_min), float(k_max)
        self.sources = _node_ids(sources, "sources", n)
        if self.sources.size == 0:
            raise ValueError("a network needs at least one source node (its input)")
        self.ground = _node_ids(ground, "ground", n)
        both = np.intersect1d(self.sources, self.ground)
        if both.size:
            raise ValueError(f"nodes {both.tolist()} are both sources and ground")
        if input_kind == "voltage":
            self.fixed = np.concatenate([self.sources, self.ground])
        else:
            if self.ground.size == 0:
                raise ValueError(
                    "input_kind='current' needs at least one ground node (else V is defined up to a "
                    "constant and the Laplacian is singular)"
                )
            self.fixed = self.ground.copy()
        is_fixed = np.zeros(n, dtype=bool)
        is_fixed[self.fixed] = True
        self.free = np.nonzero(~is_fixed)[0]
        if self.free.size == 0:
            raise ValueError(
                "every node is fixed (source or ground): there is nothing for the physics to settle"
            )
        self._set_outputs(output_nodes, output_edges, is_fixed)
        self._check_floating()
        self._build_structure()
        if np.linalg.matrix_rank((self._Mf @ self._Mf.T).toarray()) < self.n_outputs:
            raise ValueError(
                f"the {self.n_outputs} outputs {self.output_pairs.tolist()[:8]} (node, node-or--1 pairs) are "
                "linearly dependent on the free nodes, so they cannot be clamped independently; remove one"
            )
        self.k = self.check_k_in_range(np.full(len(e), min(max(1.0, self.k_min), self.k_max)) if k is None else k)

    # ---- construction helpers ------------------------------------------------------------------
    def _set_outputs(self, output_nodes, output_edges, is_fixed) -> None:
        n = self.n_nodes
        on = _node_ids(output_nodes, "output_nodes", n)
        pairs = [np.stack([on, np.full_like(on, -1)], 1)]
        if output_edges is not None:
            oe = _np(output_edges, np.float64)
            if oe.ndim != 2 or oe.shape[1] != 2 or np.any(oe != np.round(oe)):
                raise ValueError(
                    f"output_edges must be integer node pairs of shape (m, 2), got {tuple(oe.shape)}"
                )
            oe = oe.astype(np.int64)
            if np.any((oe < 0) | (oe >= n)):
                raise ValueError(f"output_edges reference nodes outside [0, {n})")
            if np.any(oe[:, 0] == oe[:, 1]):
                raise ValueError("an output edge joins a node to itself (its drop is always 0)")
            pairs.append(oe)
        out = np.concatenate(pairs).astype(np.int64)
        if len(out) == 0:
            raise ValueError("a network needs outputs: pass output_nodes and/or output_edges")
        a_fixed = is_fixed[out[:, 0]]
        b_fixed = np.where(out[:, 1] >= 0, is_fixed[np.maximum(out[:, 1], 0)], True)
        dead = np.nonzero(a_fixed & b_fixed)[0]
        if dead.size:
            raise ValueError(
                f"outputs {dead.tolist()} only involve fixed (source/ground) nodes {out[dead].tolist()}; "
                "an output must involve at least one free node"
            )
        self.output_pairs = out
        self.n_outputs = len(out)

    def _check_floating(self) -> None:
        n = self.n_nodes
        A = sp.coo_matrix((np.ones(len(self.edges)), (self.edges[:, 0], self.edges[:, 1])), shape=(n, n))
        n_comp, labels = sp.csgraph.connected_components(A, directed=False)
        anchored = np.zeros(n_comp, dtype=bool)
        anchored[labels[self.fixed]] = True
        if not anchored.all():
            comps = [np.nonzero(labels == c)[0].tolist() for c in np.nonzero(~anchored)[0]]
            raise FloatingNodesError(sorted(comps, key=len, reverse=True), self.input_kind)

    def _build_structure(self) -> None:
        """Precompute the sparsity pattern of L_ff (so assembling it for a new k is one bincount)."""
        n, e = self.n_nodes, self.edges
        E = len(e)
        self.n_free = nf = len(self.free)
        pos = np.full(n, -1, dtype=np.int64)  # node -> index among free nodes
        pos[self.free] = np.arange(nf)
        fpos = np.full(n, -1, dtype=np.int64)  # node -> index among fixed nodes
        fpos[self.fixed] = np.arange(len(self.fixed))
        self._pos, self._fpos = pos, fpos
        a, b = pos[e[:, 0]], pos[e[:, 1]]
        rows, cols, eid, sgn = [], [], [], []
        for u, v in ((a, a), (b, b), (a, b), (b, a)):
            ok = (u >= 0) & (v >= 0)
            rows.append(u[ok]), cols.append(v[ok]), eid.append(np.nonzero(ok)[0])
            sgn.append(np.full(int(ok.sum()), 1.0 if u is v else -1.0))
        rows, cols, eid, sgn = map(np.concatenate, (rows, cols, eid, sgn))
        lin = cols * nf + rows  # CSC order = sorted by (col, row)
        uniq, inv = np.unique(lin, return_inverse=True)
        self._L_indices = (uniq % nf).astype(np.int32)
        self._L_indptr = np.searchsorted(uniq // nf, np.arange(nf + 1)).astype(np.int32)
        self._L_inv, self._L_eid, self._L_sgn, self._L_nnz = inv, eid, sgn, len(uniq)
        # L_ff's data = P k (P: nnz x E, entries +-1), one sparse mat-vec per conductance vector
        self._L_map = sp.csr_matrix((sgn, (inv, eid)), shape=(len(uniq), E))
        self._pattern = LaplacianPattern(self._L_indptr, self._L_indices, nf)
        self._solvers: dict[tuple[str, float | None], LaplacianSolver] = {}  # shared by with_k copies
        # boundary edges (one free end, one fixed end): b_f = -L_fF V_F
        fa, fb = fpos[e[:, 0]], fpos[e[:, 1]]
        bnd = np.nonzero(((a >= 0) & (fb >= 0)) | ((b >= 0) & (fa >= 0)))[0]
        self._bnd = bnd
        self._bnd_free = np.where(a[bnd] >= 0, a[bnd], b[bnd])
        self._bnd_fixed = np.where(a[bnd] >= 0, fb[bnd], fa[bnd])
        # incidence on free nodes: dV_e = V_a - V_b  for free-node vectors (fixed entries = 0)
        ea = np.nonzero(a >= 0)[0]
        eb = np.nonzero(b >= 0)[0]
        self._Df = sp.csr_matrix(
            (np.r_[np.ones(len(ea)), -np.ones(len(eb))], (np.r_[ea, eb], np.r_[a[ea], b[eb]])), shape=(E, nf)
        )
        # outputs restricted to free nodes: M_f (m, n_f); and the fixed-node part
        out = self.output_pairs
        m = len(out)
        r, c, v = [], [], []
        for col, s in ((0, 1.0), (1, -1.0)):
            nodes = out[:, col]
            ok = nodes >= 0
            ok_free = ok & (pos[np.maximum(nodes, 0)] >= 0)
            (
                r.append(np.nonzero(ok_free)[0]),
                c.append(pos[nodes[ok_free]]),
                v.append(np.full(int(ok_free.sum()), s)),
            )
        self._Mf = sp.csr_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))), shape=(m, nf))

    # ---- conductances ----------------------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def n_inputs(self) -> int:
        return len(self.sources)

    def check_k(self, k: ArrayLike) -> np.ndarray:
        """Validate conductances: shape ``(E,)``, finite, ``> 0``. Returns a float64 copy."""
        kk = _np(k).copy()
        if kk.shape != (self.n_edges,):
            raise ValueError(
                f"k must have shape ({self.n_edges},) (one conductance per edge), got {kk.shape}"
            )
        bad = np.nonzero(~np.isfinite(kk))[0]
        if bad.size:
            raise ValueError(
                f"conductances of edges {bad.tolist()[:8]} are not finite: {kk[bad[:8]].tolist()}"
            )
        bad = np.nonzero(kk <= 0)[0]
        if bad.size:
            raise ValueError(
                f"conductances must be > 0; edges {bad.tolist()[:8]} have k = {kk[bad[:8]].tolist()} "
                "(remove an edge instead of giving it k = 0)"
            )
        return kk

    def check_k_in_range(self, k: ArrayLike, name: str = "k") -> np.ndarray:
        """:meth:`check_k`, and every conductance in ``[k_min, k_max]`` (what a network holds and what learning
        starts from: a step clips to this range, so a conductance outside it would change without a word).
        Returns a float64 copy; the error names ``name`` and the edges."""
        kk = self.check_k(k)
        bad = np.nonzero((kk < self.k_min) | (kk > self.k_max))[0]
        if bad.size:
            raise ValueError(
                f"{name}: conductances of edges {bad.tolist()[:8]} are {kk[bad[:8]].tolist()}, outside "
                f"[k_min, k_max] = [{self.k_min:g}, {self.k_max:g}] (learning would clip them silently); "
                "pass k_min / k_max to ResistorNetwork to widen the range, or clip k yourself"
            )
        return kk

    def __getstate__(self) -> dict:
        """Pickling / deep copies leave out the cached factorization analyses (native handles); the copy analyses
        again on first use."""
        state = self.__dict__.copy()
        state["_solvers"] = {}
        return state

    def with_k(self, k: ArrayLike) -> ResistorNetwork:
        """A shallow copy of the network with conductances ``k`` (topology and precomputations shared).

        ``k`` is checked as at construction (:meth:`check_k_in_range`)."""
        new = object.__new__(ResistorNetwork)
        new.__dict__.update(self.__dict__)
        new.k = self.check_k_in_range(k)
        return new

    def _k(self, k: ArrayLike | None) -> np.ndarray:
        return self.k if k is None else self.check_k(k)

    # ---- linear algebra ----------------------------------------------------------------------------
    def laplacian(self, k: ArrayLike | None = None) -> sp.csc_matrix:
        r"""The reduced Laplacian :math:`L_{ff}(k)` (the physical Hessian :math:`\nabla^2_{V_f} P`), CSC."""
        return self._pattern.matrix(self._laplacian_data(self._k(k)))

    def _laplacian_data(self, kk: np.ndarray) -> np.ndarray:
        """The CSC data of :math:`L_{ff}(k)` for checked conductances (the pattern never changes)."""
        return self._L_map @ kk

    def solver(self, backend: str | None = None, memory_limit: float | None = None) -> LaplacianSolver:
        """The :class:`~doubleopt.physical._factor.LaplacianSolver` of this network for ``backend`` (default: the
        network's): its symbolic analysis is computed once and shared by every conductance vector, every
        :meth:`with_k` copy and every learning step. ``solver().stats`` reports the backend in use, the factor's
        size and memory and the residual-check fallbacks."""
        backend = self.backend if backend is None else backend
        memory_limit = self.memory_limit if memory_limit is None else memory_limit
        key = (backend, memory_limit)
        if key not in self._solvers:
            self._solvers[key] = LaplacianSolver(self._pattern, backend, memory_limit)
        return self._solvers[key]

    def factorize(
        self, k: ArrayLike | None = None, *, backend: str | None = None, memory_limit: float | None = None
    ) -> LaplacianFactor:
        """Factorize :math:`L_{ff}(k)` once; the factor serves every state and sample for this ``k``.

        ``backend`` / ``memory_limit``: override the network's (see :class:`ResistorNetwork`)."""
        return LaplacianFactor(self, self._k(k), backend=backend, memory_limit=memory_limit)

    def _check_inputs(self, inputs: ArrayLike, name: str = "inputs") -> np.ndarray:
        return _check_samples(name, inputs, self.n_inputs, "n_inputs")

    def _check_targets(self, targets: ArrayLike, B: int, name: str = "targets") -> np.ndarray:
        """Targets ``(B, n_outputs)``; ``B = 0`` is refused (a cost is a mean over the samples)."""
        return _check_samples(name, targets, self.n_outputs, "n_outputs", batch=B)

    # ---- convenience (torch in / torch out) ----------------------------------------------------------
    def free_state(self, inputs: ArrayLike, k: ArrayLike | None = None, *, backend: str | None = None) -> Tensor:
        """Free-state node voltages ``(B, n)`` (float64) for inputs ``(B, n_inputs)``."""
        return torch.from_numpy(self.factorize(k, backend=backend).free(inputs).V)

    def clamped_state(
        self, inputs: ArrayLike, targets: ArrayLike, eta: float, k: ArrayLike | None = None, *,
        backend: str | None = None,
    ) -> Tensor:
        r"""Clamped voltages ``(B, n)``: outputs held at :math:`O^F + \eta (T - O^F)` (coupled learning).

        ``eta`` must be in ``(0, 1]``, as for :class:`~doubleopt.physical.CoupledLearning`."""
        eta = check_strength("eta", eta, upper=1.0)
        f = self.factorize(k, backend=backend)
        st = f.free(inputs, targets)
        return torch.from_numpy(st.V + f.node_response(f.clamp_weights(st, eta)))

    def nudged_state(
        self, inputs: ArrayLike, targets: ArrayLike, beta: float, k: ArrayLike | None = None, *,
        backend: str | None = None,
    ) -> Tensor:
        r"""Nudged voltages ``(B, n)``: the minimizer of :math:`P + \beta C` (equilibrium propagation).

        ``beta`` must be finite and ``> 0``."""
        beta = check_strength("beta", beta)
        f = self.factorize(k, backend=backend)
        st = f.free(inputs, targets)
        return torch.from_numpy(st.V + f.node_response(f.nudge_weights(st, beta)))

    def outputs(self, V: ArrayLike) -> Tensor:
        """Outputs ``(B, m)`` of full node voltages ``V`` ``(B, n)``: node voltages then drops."""
        Vt = torch.as_tensor(V)
        a, b = torch.from_numpy(self.output_pairs[:, 0]), torch.from_numpy(self.output_pairs[:, 1])
        Vb = torch.where(b >= 0, Vt[..., b.clamp_min(0)], torch.zeros((), dtype=Vt.dtype))
        return Vt[..., a] - Vb

    def drops(self, V: ArrayLike) -> Tensor:
        """Edge voltage drops ``(B, E)``: ``V[a_e] - V[b_e]``."""
        Vt = torch.as_tensor(V)
        e = torch.from_numpy(self.edges)
        return Vt[..., e[:, 0]] - Vt[..., e[:, 1]]

    def power(self, V: ArrayLike, k: ArrayLike | None = None) -> Tensor:
        r"""Dissipated power :math:`\tfrac12 \sum_e k_e \Delta V_e^2` per sample, ``(B,)``."""
        kk = torch.from_numpy(self._k(k))
        dV = self.drops(V)
        return 0.5 * (kk.to(dV.dtype) * dV**2).sum(-1)

    def cost(
        self, inputs: ArrayLike, targets: ArrayLike, k: ArrayLike | None = None, *, backend: str | None = None
    ) -> float:
        r"""Learning cost :math:`C = \frac{1}{B}\sum_b \tfrac12 \|M V^F_b - T_b\|^2` at the free state."""
        f = self.factorize(k, backend=backend)
        return float(f.free(inputs, targets).cost)

    def __repr__(self) -> str:
        return (
            f"ResistorNetwork(n_nodes={self.n_nodes}, n_edges={self.n_edges}, n_inputs={self.n_inputs} "
            f"({self.input_kind}), n_ground={len(self.ground)}, n_outputs={self.n_outputs})"
        )


@dataclass
class FreeState:
    r"""The free state of a batch of ``B`` samples, in factored (superposition) form, float64 NumPy.

    The free state is linear in the imposed values, so it is stored as ``coef (B, p) @ basis^T``:
    ``basis`` holds ``p`` node-voltage responses (one per fixed node for voltage inputs, one per source for
    current inputs, or the ``B`` solutions themselves when ``B <= p``). Then
    :math:`V = \text{coef}\, \text{basis}^\top` and :math:`\Delta V = \text{coef}\, A^\top` with the
    basis edge drops :math:`A = D\, \text{basis}` (``E x p``); the learning rules never form
    ``(B, E)`` arrays.

    Attributes:
        coef: ``(B, p)``. basis: ``(n, p)``. drop_basis: ``(E, p)``.
        out: ``(B, m)`` outputs. residual: ``(B, m)`` ``out - targets`` (``None`` without targets).
    """

    coef: np.ndarray
    basis: np.ndarray
    drop_basis: np.ndarray
    out: np.ndarray
    residual: np.ndarray | None = None
    targets: np.ndarray | None = None

    @property
    def V(self) -> np.ndarray:
        """Node voltages ``(B, n)``."""
        return self.coef @ self.basis.T

    @property
    def dV(self) -> np.ndarray:
        """Edge drops ``(B, E)``."""
        return self.coef @ self.drop_basis.T

    @property
    def cost(self) -> float:
        if self.residual is None:
            raise ValueError("this free state was computed without targets")
        return float(0.5 * (self.residual**2).sum(1).mean())


def mean_product(P: np.ndarray, Q: np.ndarray, R: np.ndarray, S: np.ndarray) -> np.ndarray:
    r""":math:`\frac1B \sum_b (P Q^\top)_{b,:} \odot (R S^\top)_{b,:}`, ``(E,)``, without ``(B, E)`` arrays.

    ``P (B, p)``, ``Q (E, p)``, ``R (B, r)``, ``S (E, r)``: equals ``((Q @ (P^T R / B)) * S).sum(1)``.
    """
    return np.einsum("eq,eq->e", Q @ (P.T @ R / P.shape[0]), S)


class LaplacianFactor:
    """A factorization of :math:`L_{ff}(k)` and the output responses :math:`Z, S`, reused for all solves.

    Build with :meth:`ResistorNetwork.factorize`. The network's :class:`LaplacianSolver` (one symbolic analysis
    per network and backend) refactorizes numerically for ``k``; every solve is residual-checked and redone with
    a fresh SuperLU factorization if the check fails. Singular or non-finite systems raise
    :class:`SingularNetworkError`; no solve ever returns NaN voltages silently. ``reference=True`` skips the
    backend and factorizes with SuperLU from scratch (minimum degree each time), the path every check falls
    back to, for comparisons.
    """

    def __init__(
        self, net: ResistorNetwork, k: np.ndarray, *, backend: str | None = None, memory_limit: float | None = None,
        reference: bool = False,
    ):
        self.net, self.k = net, k
        data = net._laplacian_data(k)
        if not np.isfinite(data).all():
            raise SingularNetworkError(
                f"the reduced Laplacian of {net!r} overflows (conductances up to {k.max():.3g}); rescale k"
            )
        self.solver = net.solver("splu" if reference else backend, memory_limit)
        what = f"the reduced Laplacian of {net!r} (conductances span [{k.min():.3g}, {k.max():.3g}])"
        self.factor: CheckedFactor = self.solver.factor(data, what, reference)
        self.L = self.factor.matrix
        self._Z: np.ndarray | None = None

    @property
    def backend(self) -> str:
        """The backend whose solves this factor returns (``"splu-reference"`` after a residual-check fallback)."""
        return self.factor.backend

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solve :math:`L_{ff} X = R` for ``R`` of shape ``(n_free,)`` or ``(n_free, K)`` (one call, all columns).

        Raises:
            SingularNetworkError: the system is singular or numerically singular (residual check)."""
        return self.factor.solve(rhs)

    # ---- output responses -------------------------------------------------------------------------
    @property
    def Z(self) -> np.ndarray:
        r""":math:`Z = L_{ff}^{-1} M_f^\top`, ``(n_free, m)``: free-node response to unit output currents."""
        if self._Z is None:
            self._Z = self.solve(self.net._Mf.T.toarray())
        return self._Z

    @property
    def S(self) -> np.ndarray:
        r""":math:`S = M_f L_{ff}^{-1} M_f^\top`, ``(m, m)``, SPD for independent outputs."""
        S = self.net._Mf @ self.Z
        return 0.5 * (S + S.T)

    @property
    def dZ(self) -> np.ndarray:
        """Edge drops of the output responses, ``(E, m)``."""
        if not hasattr(self, "_dZ"):
            self._dZ = np.asarray(self.net._Df @ self.Z)
        return self._dZ

    def _solve_S(self, rhs: np.ndarray, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
        A = shift * np.eye(self.net.n_outputs) + scale * self.S
        try:
            c = np.linalg.cholesky(A)
        except np.linalg.LinAlgError as err:
            raise SingularNetworkError(
                "the outputs are linearly dependent (S = M L^-1 M^T is singular), so they cannot be clamped "
                "independently; remove the redundant output"
            ) from err
        return np.linalg.solve(c.T, np.linalg.solve(c, rhs))

    # ---- states ----------------------------------------------------------------------------------------
    def free(
        self, inputs: ArrayLike, targets: ArrayLike | None = None, superpose: bool | None = None
    ) -> FreeState:
        """The free state for inputs ``(B, n_inputs)`` (and the residual if ``targets`` are given).

        Args:
            superpose: solve for the ``p`` unit responses of the fixed nodes / sources and superpose them
                (``p`` right-hand sides instead of ``B``); default: when ``p < B``.
        """
        net = self.net
        x = net._check_inputs(inputs)
        B, nF = x.shape[0], len(net.fixed)
        p = nF if net.input_kind == "voltage" else net.n_inputs
        if superpose is None:
            superpose = p < B
        if net.input_kind == "voltage":
            VF = np.concatenate([x, np.zeros((B, len(net.ground)))], 1)  # (B, n_fixed)
            Lb = sp.csr_matrix((self.k[net._bnd], (net._bnd_free, net._bnd_fixed)), shape=(net.n_free, nF))
            if superpose:
                coef, rhs = VF, Lb.toarray()  # unit voltage on each fixed node: -L_fF e_j
                fixed_part = np.eye(nF)
            else:
                coef, rhs = np.eye(B), np.asarray(Lb @ VF.T)  # -L_fF V_F
                fixed_part = VF.T
        else:
            src = net._pos[net.sources]
            if superpose:
                coef, rhs = x, np.zeros((net.n_free, p))
                rhs[src, np.arange(p)] = 1.0
            else:
                coef, rhs = np.eye(B), np.zeros((net.n_free, B))
                rhs[src] = x.T
            fixed_part = np.zeros((nF, rhs.shape[1]))
        Vf = self.solve(rhs)  # residual-checked (one sparse mat-mat): a singular system never passes silently
        basis = np.empty((net.n_nodes, Vf.shape[1]))
        basis[net.free] = Vf
        basis[net.fixed] = fixed_part
        e, op = net.edges, net.output_pairs
        drop_basis = basis[e[:, 0]] - basis[e[:, 1]]
        out_basis = basis[op[:, 0]] - np.where(op[:, 1, None] >= 0, basis[np.maximum(op[:, 1], 0)], 0.0)
        out = coef @ out_basis.T
        if targets is None:
            return FreeState(coef, basis, drop_basis, out)
        t = net._check_targets(targets, B)
        return FreeState(coef, basis, drop_basis, out, out - t, t)

    def clamp_weights(self, st: FreeState, eta: float) -> np.ndarray:
        r"""Output currents ``(B, m)`` clamping at :math:`O^F + \eta(T - O^F)`, :math:`-\eta S^{-1} r`."""
        return self._solve_S(-eta * st.residual.T).T

    def nudge_weights(self, st: FreeState, beta: float) -> np.ndarray:
        r"""Output currents ``(B, m)`` of the nudged state: :math:`-\beta (I + \beta S)^{-1} r`."""
        return self._solve_S(-beta * st.residual.T, shift=1.0, scale=beta).T

    def node_response(self, w: np.ndarray) -> np.ndarray:
        """Node-voltage change ``(B, n)`` from output currents ``w`` ``(B, m)`` (fixed nodes unchanged)."""
        dV = np.zeros((w.shape[0], self.net.n_nodes))
        dV[:, self.net.free] = w @ self.Z.T
        return dV

    def drop_response(self, w: np.ndarray) -> np.ndarray:
        """Edge-drop change ``(B, E)`` from output currents ``w`` ``(B, m)``."""
        return w @ self.dZ.T


def check_strength(name: str, value: float, upper: float | None = None) -> float:
    """``value`` as a float in ``(0, upper]`` (``(0, inf)`` without ``upper``); NaN, inf, ``<= 0`` and
    non-numbers are refused with a ``ValueError`` naming ``name``."""
    try:
        v = float(value) if not isinstance(value, str | bytes) else None
    except (TypeError, ValueError):
        v = None
    if v is None:
        raise ValueError(f"{name} must be a number, got {value!r}")
    hi = np.inf if upper is None else upper
    if not (0 < v <= hi) or not np.isfinite(v):
        rng = f"0 < {name} <= {upper:g}" if upper is not None else f"a finite {name} > 0"
        raise ValueError(f"{name} must satisfy {rng}, got {value!r}")
    return v


def _check_samples(name: str, values: ArrayLike, width: int, width_name: str, batch: int | None = None) -> np.ndarray:
    """``values`` as a finite ``(B, width)`` array (a 1-D array is accepted when ``width == 1``); the error names
    the expected shape or the samples holding NaN or inf. With ``batch`` (targets, used where a cost is a mean
    over the samples) an empty batch is refused too."""
    v = _np(values)
    if v.ndim == 1 and width == 1:
        v = v[:, None]
    B = "B" if batch is None else batch
    if v.ndim != 2 or v.shape[1] != width or (batch is not None and v.shape[0] != batch):
        raise ValueError(f"{name} must have shape (B, {width_name}) = ({B}, {width}), got {tuple(v.shape)}")
    if batch is not None and batch == 0:
        raise ValueError(f"{name}: the batch is empty (B = 0); a cost is a mean over samples, pass at least one")
    bad = np.nonzero(~np.isfinite(v).all(1))[0]
    if bad.size:
        raise ValueError(f"{name} of samples {bad.tolist()[:10]} hold NaN or inf")
    return v
