"""Physical learning at scale (issue 19): the factorization backends against SuperLU, the analysis cache, the
fallbacks, the memory check and the scalable generators. Small networks, float64, a few seconds in all."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import doubleopt.physical as ph
from doubleopt.physical import _factor
from doubleopt.physical._factor import LaplacianPattern, LaplacianSolver, predict_factor_nnz, reference_lu

BACKENDS = [
    "splu",
    "qdldl",
    pytest.param(
        "pardiso",
        marks=pytest.mark.skipif(not _factor.installed("pardiso"), reason="pypardiso not installed (extra 'pardiso')"),
    ),
]
TOL = 1e-10


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


def reference_factor(net: ph.ResistorNetwork, k=None) -> ph.LaplacianFactor:
    """A factor whose every solve goes through today's SuperLU (from scratch, minimum degree, symmetric mode)."""
    f = ph.LaplacianFactor(net, net.k if k is None else np.asarray(k, dtype=np.float64), reference=True)
    assert f.backend == "splu-reference"
    return f


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(_factor, "_warned", set())


@pytest.fixture(scope="module")
def nets():
    """A 2D Delaunay network above the size where the memory prediction samples (voltage inputs, node outputs),
    and a 3D one with current inputs and edge outputs."""
    a = ph.random_network(2500, None, n_inputs=3, n_outputs=3, seed=1, k_init="uniform")
    b = ph.random_network(600, 8.0, n_inputs=2, n_outputs=2, seed=2, k_init="uniform", dim=3,
                          input_kind="current", output_kind="edges")
    return [a, b]


@pytest.mark.parametrize("backend", BACKENDS)
def test_free_clamped_nudged_states_match_superlu(nets, backend):
    rng = np.random.default_rng(0)
    for net in nets:
        x = rng.random((5, net.n_inputs))
        t = 0.3 * rng.random((5, net.n_outputs))
        ref = reference_factor(net)
        st = ref.free(x, t)
        V_ref = st.V
        Vc_ref = V_ref + ref.node_response(ref.clamp_weights(st, 0.2))
        Vn_ref = V_ref + ref.node_response(ref.nudge_weights(st, 0.3))
        assert rel(net.free_state(x, backend=backend), V_ref) < TOL
        assert rel(net.clamped_state(x, t, 0.2, backend=backend), Vc_ref) < TOL
        assert rel(net.nudged_state(x, t, 0.3, backend=backend), Vn_ref) < TOL
        assert net.solver(backend).backend == backend
        assert net.solver(backend).stats.fallbacks == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_rhs_solve_is_one_call_and_matches_columns(nets, backend):
    net = nets[0]
    f = net.factorize(backend=backend)
    R = np.random.default_rng(1).standard_normal((net.n_free, 7))
    X = f.solve(R)
    X_ref = reference_lu(f.L).solve(R)
    assert X.shape == R.shape and rel(X, X_ref) < TOL
    assert rel(f.solve(R[:, 3]), X_ref[:, 3]) < TOL  # a vector right-hand side keeps its shape
    assert f.solve(R[:, :0]).shape == (net.n_free, 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", [1, 8])
def test_learning_steps_and_gradients_unchanged(nets, backend, B):
    rng = np.random.default_rng(B)
    rules = [ph.CoupledLearning(0.1), ph.EquilibriumPropagation(0.05, symmetric=True), ph.ExactGradient()]
    for net in nets:
        x, t = rng.random((B, net.n_inputs)), 0.3 * rng.random((B, net.n_outputs))
        ref = reference_factor(net)
        st = ref.free(x, t)
        for rule in rules:
            g_ref = rule.estimate(ref, st)
            for superpose in (False, True):
                out = ph.learning_step(net, x, t, rule, 0.5, superpose=superpose, backend=backend)
                assert rel(out.direction, g_ref) < TOL, (type(rule).__name__, superpose)
                assert out.cost == pytest.approx(st.cost, rel=1e-12)
                assert out.stats.backend == backend
        C, g = ph.exact_gradient(net, x, t, backend=backend)
        assert rel(g, rules[2].estimate(ref, st)) < TOL


def test_analysis_is_done_once_per_network_and_backend(nets, monkeypatch):
    net = nets[0]
    calls = []
    real = _factor.QdldlAnalysis.__init__

    def counting(self, pattern):
        calls.append(pattern)
        real(self, pattern)

    monkeypatch.setattr(_factor.QdldlAnalysis, "__init__", counting)
    fresh = net.with_k(net.k)  # shares the network's solvers (same pattern)
    fresh._solvers.clear()
    x, t = np.full((2, net.n_inputs), 0.5), np.zeros((2, net.n_outputs))
    res = ph.train(fresh, x, t, ph.CoupledLearning(0.1), steps=4, lr=1.0, eval_every=2, backend="qdldl")
    fresh.with_k(res.k).cost(x, t, backend="qdldl")
    assert len(calls) == 1


def test_networks_pickle_and_copy_without_their_analyses(nets):
    import copy
    import pickle

    net = nets[0]
    x = np.full((1, net.n_inputs), 0.4)
    V = net.free_state(x, backend="qdldl")
    for other in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert other._solvers == {} and rel(other.free_state(x, backend="qdldl"), V) < TOL
    assert net.solver("qdldl")._analysis is not None  # the original keeps its own


def test_interleaved_factors_of_a_stateful_backend_stay_correct(nets):
    """QDLDL / PARDISO keep one factorization per analysis: an older factor refactorizes before solving."""
    net = nets[0]
    k2 = np.random.default_rng(3).uniform(0.2, 5.0, net.n_edges)
    f1, f2 = net.factorize(backend="qdldl"), net.factorize(k2, backend="qdldl")
    R = np.random.default_rng(4).standard_normal((net.n_free, 2))
    assert rel(f1.solve(R), reference_lu(f1.L).solve(R)) < TOL
    assert rel(f2.solve(R), reference_lu(f2.L).solve(R)) < TOL
    assert rel(f1.solve(R), reference_lu(f1.L).solve(R)) < TOL


def test_missing_backend_falls_back_with_one_warning(nets, monkeypatch):
    net = nets[1]
    monkeypatch.setitem(sys.modules, "pypardiso", None)  # import pypardiso -> ImportError
    net._solvers.clear()
    with pytest.warns(RuntimeWarning, match=r"'pardiso'.*doubleopt\[pardiso\].*'qdldl'") as rec:
        V = net.free_state(np.ones((1, net.n_inputs)), backend="pardiso")
        net.free_state(np.ones((1, net.n_inputs)), backend="pardiso", k=net.k * 2)
        ph.ResistorNetwork(net.n_nodes, net.edges, sources=net.sources, ground=net.ground,
                           output_edges=net.output_pairs, input_kind="current", backend="pardiso").cost(
            np.ones((1, net.n_inputs)), np.zeros((1, net.n_outputs)))
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert net.solver("pardiso").backend == "qdldl"
    assert rel(V, reference_factor(net).free(np.ones((1, net.n_inputs))).V) < TOL
    monkeypatch.setitem(sys.modules, "qdldl", None)
    net._solvers.clear()
    with pytest.warns(RuntimeWarning, match=r"'qdldl'.*pip install qdldl.*'splu'"):
        assert net.solver("qdldl").backend == "splu"
    assert net.solver("auto").backend == "splu"


@pytest.mark.parametrize("backend", ["qdldl", "splu"])
def test_bad_refactorization_is_redone_with_superlu_never_returned(nets, monkeypatch, backend):
    net = nets[0]
    net._solvers.clear()
    x, t = np.full((1, net.n_inputs), 0.7), np.zeros((1, net.n_outputs))
    k2 = np.random.default_rng(5).uniform(0.5, 2.0, net.n_edges)
    ph.learning_step(net, x, t, ph.ExactGradient(), 1.0, backend=backend)  # analysis, first refactorization
    if backend == "qdldl":  # a numeric update that silently keeps the previous factor (as QDLDL does on failure)
        monkeypatch.setattr(_factor.QdldlAnalysis, "_numeric", lambda self, values: None)
    else:  # a factorization whose solves are off by a relative 1e-6
        monkeypatch.setattr(_factor._PermutedLU, "solve", lambda self, R: np.linalg.norm(R) * 1e-6 + R * 0)
    ref = reference_factor(net, k2)
    g_ref = ph.ExactGradient().estimate(ref, ref.free(x, t))
    with pytest.warns(RuntimeWarning, match="failed its residual check"):
        out = ph.learning_step(net, x, t, ph.ExactGradient(), 1.0, k=k2, backend=backend)
    assert rel(out.direction, g_ref) < TOL
    assert out.stats.backend == "splu-reference" and out.stats.fallbacks >= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_clear_errors(nets, backend):
    net = nets[1]
    x = np.ones((1, net.n_inputs))
    with pytest.raises(ValueError, match="conductances must be > 0"):
        net.free_state(x, k=np.r_[0.0, net.k[1:]], backend=backend)
    with pytest.raises(ValueError, match="not finite"):
        net.free_state(x, k=np.r_[np.nan, net.k[1:]], backend=backend)
    with pytest.raises(ph.SingularNetworkError):  # denormal conductances: numerically singular
        net.free_state(x, k=np.full(net.n_edges, 1e-320), backend=backend)
    with pytest.raises(ph.SingularNetworkError, match="overflows"):
        net.free_state(x, k=np.full(net.n_edges, 1e308), backend=backend)
    with pytest.raises(ph.FloatingNodesError):
        ph.ResistorNetwork(4, [[0, 1], [2, 3]], sources=[0], output_nodes=[1], backend=backend)


def test_bad_arguments_name_themselves(nets):
    net = nets[1]
    with pytest.raises(ValueError, match="backend must be one of"):
        net.free_state(np.ones((1, net.n_inputs)), backend="cholmod")
    with pytest.raises(ValueError, match="backend must be one of"):
        ph.random_network(50, backend="umfpack")
    with pytest.raises(ValueError, match="memory_limit"):
        ph.random_network(50, memory_limit=-1)
    with pytest.raises(ValueError, match="dim must be 2 or 3"):
        ph.delaunay_graph(100, 4)
    with pytest.raises(ValueError, match="n_nodes"):
        ph.delaunay_graph(3)


def test_memory_refusal_before_numeric_work(monkeypatch):
    net = ph.random_network(2500, None, seed=3, memory_limit=1e5)
    built = []
    monkeypatch.setattr(_factor.QdldlAnalysis, "__init__", lambda self, p: built.append(p))
    with pytest.raises(ph.NetworkTooLargeError, match=r"GiB.*memory_limit") as err:
        net.free_state(np.ones((1, 2)))
    assert "predicted from sample factorizations" in str(err.value) and not built  # refused before the analysis
    monkeypatch.undo()
    small = ph.random_network(500, None, seed=3)  # too small to predict: checked right after its analysis
    with pytest.raises(ph.NetworkTooLargeError, match="from the symbolic analysis"):
        small.factorize(memory_limit=1e4)
    ok = ph.random_network(2500, None, seed=3, memory_limit=float("inf"))
    assert ok.free_state(np.ones((1, 2))).shape == (1, 2500)


def test_memory_prediction_is_close():
    net = ph.random_network(12_000, None, seed=4)
    actual = net.solver("qdldl", float("inf")).analysis().factor_nnz
    assert predict_factor_nnz(net._pattern, sample=12_000) == actual  # small enough: factorized whole
    assert 0.5 * actual <= predict_factor_nnz(net._pattern, sample=3000) <= 2 * actual


def test_step_stats_report_backend_and_memory(nets):
    net = nets[0]
    out = ph.learning_step(net, np.full((1, 3), 0.5), np.zeros((1, 3)), ph.CoupledLearning(0.1), 1.0, backend="qdldl")
    s = out.stats
    assert s.backend == "qdldl" and s.factor_nnz > net.n_free and s.factor_bytes > 8 * s.factor_nnz
    if sys.platform.startswith("linux"):
        assert s.peak_rss_bytes is not None and s.peak_rss_bytes > s.factor_bytes


@pytest.mark.skipif(not _factor.installed("pardiso"), reason="pypardiso not installed (extra 'pardiso')")
def test_pardiso_and_torch_share_the_process(nets):
    """MKL runs on GNU OpenMP like PyTorch: both work, interleaved, with several threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = torch.randn(300, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        before = a @ a
        net = nets[0]
        x, t = np.full((4, 3), 0.5), np.zeros((4, 3))
        out = ph.learning_step(net, x, t, ph.ExactGradient(), 1.0, backend="pardiso")
        assert torch.equal(a @ a, before)
        ref = reference_factor(net)
        assert rel(out.direction, ph.ExactGradient().estimate(ref, ref.free(x, t))) < TOL
    finally:
        torch.set_num_threads(old)


# ---- generators --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim, lo, hi", [(2, 5.8, 6.0), (3, 14.0, 16.0)])
def test_delaunay_graph_seeded_connected_deduplicated(dim, lo, hi):
    g = ph.delaunay_graph(3000, dim, seed=5)
    assert g.n_nodes == 3000 and g.positions.shape == (3000, dim)
    assert np.array_equal(g.edges, ph.delaunay_graph(3000, dim, seed=5).edges)
    assert not np.array_equal(g.edges[:100], ph.delaunay_graph(3000, dim, seed=6).edges[:100])
    assert (g.edges[:, 0] < g.edges[:, 1]).all() and len(np.unique(g.edges, axis=0)) == len(g.edges)
    A = sp.coo_matrix((np.ones(len(g.edges)), (g.edges[:, 0], g.edges[:, 1])), shape=(g.n_nodes,) * 2)
    assert sp.csgraph.connected_components(A, directed=False)[0] == 1
    assert lo < g.mean_degree < hi


def test_random_graph_3d_and_network_generators():
    g = ph.random_graph(2000, 8.0, seed=1, dim=3)
    assert g.positions.shape == (2000, 3) and g.mean_degree == pytest.approx(8.0, abs=1e-3)
    A = sp.coo_matrix((np.ones(len(g.edges)), (g.edges[:, 0], g.edges[:, 1])), shape=(2000, 2000))
    assert sp.csgraph.connected_components(A, directed=False)[0] == 1
    with pytest.raises(ValueError, match="mean_degree"):
        ph.random_graph(500, 7.0, seed=0)  # above the 2D triangulation's
    net = ph.random_network(1500, None, n_outputs=3, output_kind="edges", seed=2, dim=3)
    assert net.n_nodes == 1500 and net.n_outputs == 3
    assert net.n_edges == len(ph.delaunay_graph(1500, 3, seed=2).edges)


def test_pattern_triangles():
    A = sp.random(40, 40, density=0.1, random_state=0, format="csc")
    A = (A + A.T + 40 * sp.eye(40)).tocsc()
    A.sort_indices()
    p = LaplacianPattern(A.indptr, A.indices, 40)
    U = sp.csc_matrix((A.data[p.upper], p.up_indices, p.up_indptr), shape=A.shape)
    Lo = sp.csc_matrix((A.data[p.lower], p.lo_indices, p.lo_indptr), shape=A.shape)
    assert (U != sp.triu(A)).nnz == 0 and (Lo != sp.tril(A)).nnz == 0
    s = LaplacianSolver(p, "splu")
    assert rel(s.factor(A.data).solve(np.ones(40)), np.linalg.solve(A.toarray(), np.ones(40))) < TOL
