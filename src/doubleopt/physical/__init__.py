r"""Physical learning in resistor networks: double optimization where the inner solver is physics.

The inner optimization: a resistor network settles to the node voltages that minimize the dissipated
power :math:`P(V) = \tfrac12 \sum_e k_e \Delta V_e^2` under its boundary conditions (sparse Laplacian
solve, :class:`ResistorNetwork`; or any core solver on :class:`ResistorProblem`). The outer optimization:
learning the conductances :math:`k` so the network computes a desired function, by coupled learning,
equilibrium propagation or the exact (adjoint / implicit) gradient.

Example:
    >>> import torch, doubleopt as do
    >>> net = do.physical.random_network(100, n_inputs=2, n_outputs=2, seed=0)
    >>> x = torch.rand(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> t = torch.stack([0.3 * x[:, 0] + 0.2 * x[:, 1], 0.1 * x[:, 0] + 0.4 * x[:, 1]], 1)
    >>> res = do.physical.train(net, x, t, do.physical.CoupledLearning(eta=0.1), steps=200, lr=10.0)
    >>> res.eval_cost[-1] < 0.2 * res.eval_cost[0]
    True

References: Stern et al., PRX 11, 021045 (2021); Dillavou et al., PR Applied 18, 014040 (2022);
Scellier & Bengio, Front. Comput. Neurosci. 11 (2017).
"""

from __future__ import annotations

import numpy as np

from ._factor import BACKENDS, LaplacianSolver, SolverStats, available_memory
from ._graphs import Graph, delaunay_graph, grid_graph, random_graph
from ._hessian import ModeAlignment, learning_hessian, mode_alignment, output_jacobian, physical_hessian
from ._learning import (
    CoupledLearning,
    EquilibriumPropagation,
    ExactGradient,
    StepResult,
    StepStats,
    TrainResult,
    cosine,
    coupled_learning_limit,
    exact_gradient,
    gradient_estimate,
    learning_step,
    train,
)
from ._network import (
    FloatingNodesError,
    FreeState,
    LaplacianFactor,
    NetworkTooLargeError,
    ResistorNetwork,
    SingularNetworkError,
)
from ._problem import ResistorProblem, autograd_cost, relax_free_state


def random_network(
    n_nodes: int,
    mean_degree: float | None = 4.0,
    *,
    n_inputs: int = 2,
    n_outputs: int = 1,
    n_ground: int = 1,
    output_kind: str = "nodes",
    input_kind: str = "voltage",
    seed: int = 0,
    k_init: str = "ones",
    dim: int = 2,
    backend: str = "auto",
    memory_limit: float | None = None,
) -> ResistorNetwork:
    """A :func:`random_graph` network with randomly chosen, distinct source, ground and output nodes.

    Args:
        mean_degree: ``2 E / n`` (:func:`random_graph`), or ``None`` for every Delaunay edge
            (:func:`delaunay_graph`, mean degree about 6 in 2D and 15 in 3D).
        dim: 2 (planar) or 3.
        backend: the network's factorization backend (see :class:`ResistorNetwork`).
        memory_limit: bytes its factorization may use (see :class:`ResistorNetwork`).
        output_kind: ``"nodes"`` (outputs are node voltages) or ``"edges"`` (drops across random node pairs
            joined by an edge, the "target edges" of allosteric tasks).
        k_init: ``"ones"`` or ``"uniform"`` (k ~ U[0.5, 1.5], seeded).

    Example:
        >>> net = random_network(500, 4.0, n_inputs=3, n_outputs=2, seed=1)
        >>> net.n_nodes, net.n_inputs, net.n_outputs
        (500, 3, 2)
    """
    for name, value in (("n_inputs", n_inputs), ("n_outputs", n_outputs), ("n_ground", n_ground)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    g = delaunay_graph(n_nodes, dim, seed=seed) if mean_degree is None else random_graph(
        n_nodes, mean_degree, seed=seed, dim=dim
    )
    rng = np.random.default_rng(seed + 7919)
    need = n_inputs + n_ground + (n_outputs if output_kind == "nodes" else 0)
    if need > n_nodes:
        raise ValueError(f"{need} special nodes requested but the network has only {n_nodes}")
    pick = rng.permutation(n_nodes)
    src, gnd = pick[:n_inputs], pick[n_inputs : n_inputs + n_ground]
    kw = {}
    if output_kind == "nodes":
        kw["output_nodes"] = pick[n_inputs + n_ground : need]
    elif output_kind == "edges":
        is_fixed = np.zeros(n_nodes, dtype=bool)
        is_fixed[pick[: n_inputs + n_ground]] = True
        perm = rng.permutation(len(g.edges))
        ok = perm[~is_fixed[g.edges[perm]].any(1)]
        kw["output_edges"] = g.edges[ok[:n_outputs]]
    else:
        raise ValueError(f"output_kind must be 'nodes' or 'edges', got {output_kind!r}")
    if k_init == "ones":
        k = np.ones(len(g.edges))
    elif k_init == "uniform":
        k = rng.uniform(0.5, 1.5, len(g.edges))
    else:
        raise ValueError(f"k_init must be 'ones' or 'uniform', got {k_init!r}")
    return ResistorNetwork(
        g.n_nodes, g.edges, k, sources=src, ground=gnd, input_kind=input_kind, backend=backend,
        memory_limit=memory_limit, **kw
    )


__all__ = [
    "ResistorNetwork",
    "LaplacianFactor",
    "FreeState",
    "FloatingNodesError",
    "SingularNetworkError",
    "NetworkTooLargeError",
    "LaplacianSolver",
    "SolverStats",
    "BACKENDS",
    "available_memory",
    "Graph",
    "random_graph",
    "delaunay_graph",
    "grid_graph",
    "random_network",
    "ResistorProblem",
    "relax_free_state",
    "autograd_cost",
    "CoupledLearning",
    "EquilibriumPropagation",
    "ExactGradient",
    "exact_gradient",
    "gradient_estimate",
    "coupled_learning_limit",
    "learning_step",
    "train",
    "TrainResult",
    "StepResult",
    "StepStats",
    "cosine",
    "physical_hessian",
    "learning_hessian",
    "output_jacobian",
    "mode_alignment",
    "ModeAlignment",
]

from ._tasks import Task, allosteric_task, iris_task, regression_task  # noqa: E402

__all__ += ["Task", "allosteric_task", "regression_task", "iris_task"]
