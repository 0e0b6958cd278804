r"""Network generators (seeded, no scikit-learn): spatial random networks and grids.

:func:`random_graph` builds a *spatial* random network, like the disordered networks of Stern et al.
(2021) (derived from jammed packings): ``n`` points uniform in the unit square (or cube), their Delaunay
triangulation (mean degree about 6 in 2D, about 15.5 in 3D), a random spanning tree of it (so the graph is
connected), plus random further Delaunay edges until the mean degree :math:`z = 2E/n` is reached.
:func:`delaunay_graph` keeps every Delaunay edge. Such networks have small separators (:math:`O(\sqrt n)` in 2D,
:math:`O(n^{2/3})` in 3D), so sparse direct factorizations stay cheap as ``n`` grows (an Erdos-Renyi graph
would fill in almost completely). Everything is vectorized (no Python loop over edges): a million-node 2D
network takes about ten seconds, most of it in Qhull's triangulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial import Delaunay


@dataclass
class Graph:
    """Topology of a network: ``n_nodes``, ``edges`` ``(E, 2)`` int64 and node ``positions`` ``(n, 2)``."""

    n_nodes: int
    edges: np.ndarray
    positions: np.ndarray

    @property
    def mean_degree(self) -> float:
        return 2.0 * len(self.edges) / self.n_nodes


def _check_n(n_nodes, dim) -> tuple[int, int]:
    if isinstance(dim, bool) or dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, int | np.integer) or n_nodes < dim + 2:
        raise ValueError(f"n_nodes must be an integer >= {dim + 2} for dim={dim}, got {n_nodes!r}")
    return int(n_nodes), int(dim)


def _morton_order(pts: np.ndarray) -> np.ndarray:
    """The permutation that sorts points in ``[0, 1)^d`` along a Z-order (Morton) curve."""
    n, d = pts.shape
    bits = 63 // d
    q = np.minimum(pts * (1 << bits), (1 << bits) - 1).astype(np.uint64)
    code = np.zeros(n, dtype=np.uint64)
    for b in range(bits):  # interleave the coordinates' bits (bits * d vectorized passes)
        for c in range(d):
            code |= ((q[:, c] >> np.uint64(b)) & np.uint64(1)) << np.uint64(b * d + c)
    return np.argsort(code, kind="stable")


def _delaunay_edges(pts: np.ndarray) -> np.ndarray:
    """The unique edges ``(E, 2)`` (``a < b``, sorted) of the Delaunay triangulation of ``pts`` ``(n, d)``.

    Qhull gets the points in Z-order (about twice as fast for 10^6 points: better locality); the triangulation
    is the same."""
    n, d = pts.shape
    order = _morton_order(pts)
    simplices = order[Delaunay(pts[order]).simplices]
    pairs = np.concatenate([simplices[:, [i, j]] for i, j in combinations(range(d + 1), 2)])
    pairs.sort(axis=1)
    code = np.unique(pairs[:, 0] * n + pairs[:, 1])  # dedupe shared edges: one sort of int64 codes
    edges = np.stack(np.divmod(code, n), 1)
    if len(np.unique(edges)) != n:  # a point Qhull left out (duplicate / degenerate position)
        missing = np.setdiff1d(np.arange(n), edges)
        raise ValueError(f"the Delaunay triangulation left out points {missing[:8].tolist()} (degenerate "
                         "positions); use another seed")
    return edges


def delaunay_graph(n_nodes: int, dim: int = 2, *, seed: int = 0) -> Graph:
    """Every edge of the Delaunay triangulation of ``n_nodes`` uniform random points in the unit square
    (``dim=2``, mean degree just under 6) or cube (``dim=3``, mean degree about 15); connected. The nodes are
    numbered along a Z-order curve (spatial neighbours get nearby ids, which keeps sparse work cache-local).

    Args:
        n_nodes: number of nodes (``>= dim + 2``); 10^6 in 2D builds in about ten seconds.
        dim: 2 or 3.
        seed: NumPy seed; the same seed gives the same graph.

    Example:
        >>> g = delaunay_graph(1000, seed=0)
        >>> g.n_nodes, g.positions.shape, 5.8 < g.mean_degree < 6.0
        (1000, (1000, 2), True)
        >>> bool((delaunay_graph(1000, seed=0).edges == g.edges).all())
        True
    """
    n, d = _check_n(n_nodes, dim)
    pts = np.random.default_rng(seed).random((n, d))
    pts = pts[_morton_order(pts)]  # nodes numbered along a Z-order curve: neighbours have nearby ids
    return Graph(n, _delaunay_edges(pts), pts)


def random_graph(n_nodes: int, mean_degree: float = 4.0, *, seed: int = 0, dim: int = 2) -> Graph:
    """A connected random network with ``n_nodes`` nodes and mean degree ``mean_degree``: a random spanning tree
    of the Delaunay triangulation of uniform random points plus random further Delaunay edges.

    Args:
        n_nodes: number of nodes (>= 4 in 2D, >= 5 in 3D).
        mean_degree: ``2 E / n``, between 2 (a tree) and the Delaunay triangulation's (about 6 in 2D, 15 in 3D).
        seed: NumPy seed; the same seed gives the same graph.
        dim: 2 (planar, the unit square) or 3 (the unit cube).

    Example:
        >>> g = random_graph(200, 4.0, seed=0)
        >>> g.n_nodes, round(g.mean_degree, 1)
        (200, 4.0)
    """
    n, d = _check_n(n_nodes, dim)
    rng = np.random.default_rng(seed)
    pts = rng.random((n, d))
    e = _delaunay_edges(pts)
    target = int(round(mean_degree * n / 2))
    if not (n - 1 <= target <= len(e)):
        raise ValueError(
            f"mean_degree={mean_degree} needs {target} edges, but a connected {d}D Delaunay network on {n} "
            f"nodes has between {n - 1} and {len(e)} (mean degree 2 .. {2 * len(e) / n:.2f})"
        )
    w = rng.random(len(e)) + 1e-3
    T = minimum_spanning_tree(sp.coo_matrix((w, (e[:, 0], e[:, 1])), shape=(n, n))).tocoo()
    tree = np.sort(np.stack([T.row, T.col], 1), 1).astype(np.int64)
    in_tree = np.zeros(len(e), dtype=bool)
    in_tree[np.searchsorted(e[:, 0] * n + e[:, 1], tree[:, 0] * n + tree[:, 1])] = True
    rest = rng.permutation(np.nonzero(~in_tree)[0])[: target - len(tree)]
    keep = np.sort(np.concatenate([np.nonzero(in_tree)[0], rest]))
    return Graph(n, e[keep], pts)


def grid_graph(rows: int, cols: int) -> Graph:
    """A ``rows x cols`` square lattice; node ``r * cols + c`` sits at ``(c, r)``.

    >>> grid_graph(2, 3).edges.tolist()
    [[0, 1], [1, 2], [3, 4], [4, 5], [0, 3], [1, 4], [2, 5]]
    """
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise ValueError(f"a grid needs rows, cols >= 1 and at least 2 nodes, got {rows} x {cols}")
    idx = np.arange(rows * cols).reshape(rows, cols)
    h = np.stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()], 1)
    v = np.stack([idx[:-1, :].ravel(), idx[1:, :].ravel()], 1)
    r, c = np.divmod(np.arange(rows * cols), cols)
    return Graph(rows * cols, np.concatenate([h, v]).astype(np.int64), np.stack([c, r], 1).astype(np.float64))
