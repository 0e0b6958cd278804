r"""Network generators (seeded, no scikit-learn): spatial random networks and grids.

:func:`random_graph` builds a *spatial* random network, like the disordered networks of Stern et al.
(2021) (derived from jammed packings): ``n`` points uniform in the unit square, their Delaunay
triangulation (mean degree about 6), a random spanning tree of it (so the graph is connected), plus random
further Delaunay edges until the mean degree :math:`z = 2E/n` is reached. Being planar, such networks
have small separators, so sparse direct factorizations stay cheap as ``n`` grows (an Erdos-Renyi graph
would fill in almost completely).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def random_graph(n_nodes: int, mean_degree: float = 4.0, *, seed: int = 0) -> Graph:
    """A connected planar random network with ``n_nodes`` nodes and mean degree ``mean_degree``.

    Args:
        n_nodes: number of nodes (>= 4).
        mean_degree: ``2 E / n``, between 2 (a tree) and the Delaunay triangulation's (about 6).
        seed: NumPy seed; the same seed gives the same graph.

    Example:
        >>> g = random_graph(200, 4.0, seed=0)
        >>> g.n_nodes, round(g.mean_degree, 1)
        (200, 4.0)
    """
    if isinstance(n_nodes, bool) or int(n_nodes) != n_nodes or n_nodes < 4:
        raise ValueError(f"n_nodes must be an integer >= 4, got {n_nodes!r}")
    n = int(n_nodes)
    rng = np.random.default_rng(seed)
    pts = rng.random((n, 2))
    tri = Delaunay(pts).simplices
    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [0, 2]]])
    e = np.unique(np.sort(e, 1), axis=0)
    target = int(round(mean_degree * n / 2))
    if not (n - 1 <= target <= len(e)):
        raise ValueError(
            f"mean_degree={mean_degree} needs {target} edges, but a connected planar network on {n} "
            f"nodes has between {n - 1} and {len(e)} (mean degree 2 .. {2 * len(e) / n:.2f})"
        )
    w = rng.random(len(e)) + 1e-3
    T = minimum_spanning_tree(sp.coo_matrix((w, (e[:, 0], e[:, 1])), shape=(n, n))).tocoo()
    tree = np.unique(np.sort(np.stack([T.row, T.col], 1), 1), axis=0)
    in_tree = np.zeros(len(e), dtype=bool)
    in_tree[np.searchsorted(e[:, 0] * n + e[:, 1], tree[:, 0] * n + tree[:, 1])] = True
    rest = rng.permutation(np.nonzero(~in_tree)[0])[: target - len(tree)]
    keep = np.sort(np.concatenate([np.nonzero(in_tree)[0], rest]))
    return Graph(n, e[keep].astype(np.int64), pts)


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
