"""Physical learning in resistor networks: inner solve, learning rules, gradients, Hessians, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import doubleopt as do
import doubleopt.physical as ph

f64 = torch.float64


def _data(net, B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, net.n_inputs, dtype=f64, generator=g)
    t = 0.4 * torch.rand(B, net.n_outputs, dtype=f64, generator=g)
    return x, t


def _dense_free_state(net, x, k=None):
    """Oracle: dense solve of the full Laplacian with Dirichlet rows (independent of the sparse code path)."""
    k = net.k if k is None else k
    n = net.n_nodes
    L = np.zeros((n, n))
    for (a, b), ke in zip(net.edges, k):
        L[a, a] += ke
        L[b, b] += ke
        L[a, b] -= ke
        L[b, a] -= ke
    x = np.asarray(x)
    out = []
    for xb in x:
        A, rhs = L.copy(), np.zeros(n)
        if net.input_kind == "current":
            rhs[net.sources] = xb
            fixed, vals = net.ground, np.zeros(len(net.ground))
        else:
            fixed, vals = np.r_[net.sources, net.ground], np.r_[xb, np.zeros(len(net.ground))]
        A[fixed] = 0.0
        A[fixed, fixed] = 1.0
        rhs[fixed] = vals
        out.append(np.linalg.solve(A, rhs))
    return np.stack(out)


@pytest.fixture(scope="module")
def net3():
    return ph.random_network(50, n_inputs=2, n_outputs=3, seed=0, k_init="uniform")


@pytest.mark.parametrize("input_kind", ["voltage", "current"])
@pytest.mark.parametrize("output_kind", ["nodes", "edges"])
def test_free_state_matches_dense_oracle(input_kind, output_kind):
    net = ph.random_network(
        40, n_inputs=2, n_outputs=2, seed=3, input_kind=input_kind, output_kind=output_kind, k_init="uniform"
    )
    x, _ = _data(net, B=5)
    V = net.free_state(x)
    np.testing.assert_allclose(V.numpy(), _dense_free_state(net, x), atol=1e-11)


@pytest.mark.parametrize("input_kind", ["voltage", "current"])
def test_superposition_equals_direct_solves(input_kind):
    net = ph.random_network(60, n_inputs=2, n_outputs=2, seed=9, input_kind=input_kind, k_init="uniform")
    x, t = _data(net, B=12)
    f = net.factorize()
    a, b = f.free(x, t, superpose=True), f.free(x, t, superpose=False)
    assert a.coef.shape[1] < b.coef.shape[1] == 12
    np.testing.assert_allclose(a.V, b.V, atol=1e-13)
    np.testing.assert_allclose(a.dV, b.dV, atol=1e-13)
    np.testing.assert_allclose(a.residual, b.residual, atol=1e-13)
    for rule in (ph.CoupledLearning(0.2), ph.EquilibriumPropagation(0.2, True), ph.ExactGradient()):
        np.testing.assert_allclose(rule.estimate(f, a), rule.estimate(f, b), atol=1e-13)
    # the low-rank rule formulas equal the plain (B, E) formulas
    dVC = b.dV + f.drop_response(f.clamp_weights(b, 0.2))
    np.testing.assert_allclose(
        ph.CoupledLearning(0.2).estimate(f, a), (dVC**2 - b.dV**2).mean(0) / 0.2, atol=1e-13
    )


def test_grid_free_state_symmetry():
    g = ph.grid_graph(5, 5)
    net = ph.ResistorNetwork(g.n_nodes, g.edges, sources=[0], ground=[24], output_nodes=[12, 6])
    V = net.free_state(torch.tensor([[2.0]], dtype=f64))
    assert float(V[0, 12]) == pytest.approx(1.0, abs=1e-12)  # anti-symmetric about the centre
    assert float(V[0, 6] + V[0, 18]) == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize("solver", [do.LBFGS(), do.Newton(), do.NonlinearCG()], ids=["lbfgs", "newton", "ncg"])
@pytest.mark.parametrize("input_kind", ["voltage", "current"])
def test_core_solvers_relax_to_sparse_solution(solver, input_kind):
    net = ph.random_network(40, n_inputs=2, n_outputs=1, seed=1, input_kind=input_kind, k_init="uniform")
    x, _ = _data(net, B=4)
    V = ph.relax_free_state(net, x, solver=solver, tol=1e-10, max_steps=5000)
    np.testing.assert_allclose(V.numpy(), net.free_state(x).numpy(), atol=1e-8)
    # the problem's Hessian is the reduced Laplacian (the physical Hessian)
    prob = ph.ResistorProblem(net)
    H = prob.hessian(torch.zeros(1, net.n_free, dtype=f64), x[:1])[0]
    np.testing.assert_allclose(H.numpy(), ph.physical_hessian(net), atol=1e-12)


def _fd_grad(net, x, t, k, eps=1e-6):
    out = np.zeros(net.n_edges)
    for e in range(net.n_edges):
        kp, km = k.copy(), k.copy()
        kp[e] += eps
        km[e] -= eps
        out[e] = (net.cost(x, t, kp) - net.cost(x, t, km)) / (2 * eps)
    return out


@pytest.mark.parametrize("output_kind", ["nodes", "edges"])
@pytest.mark.parametrize("input_kind", ["voltage", "current"])
def test_exact_gradient_matches_finite_differences(output_kind, input_kind):
    net = ph.random_network(
        25, n_inputs=2, n_outputs=2, seed=2, output_kind=output_kind, input_kind=input_kind, k_init="uniform"
    )
    x, t = _data(net)
    C, g = ph.exact_gradient(net, x, t)
    assert C == pytest.approx(net.cost(x, t))
    fd = _fd_grad(net, x, t, net.k)
    np.testing.assert_allclose(g.numpy(), fd, rtol=1e-6, atol=1e-7 * np.abs(fd).max())


def test_implicit_adjoint_gradient_matches_sparse_adjoint_and_fd(net3):
    x, t = _data(net3)
    log_k = torch.tensor(np.log(net3.k), requires_grad=True)
    C = ph.autograd_cost(net3, x, t, log_k.exp(), adjoint=do.Implicit(), tol=1e-12)
    C.backward()
    _, g = ph.exact_gradient(net3, x, t)
    np.testing.assert_allclose(
        log_k.grad.numpy(), (g * torch.from_numpy(net3.k)).numpy(), rtol=1e-6, atol=1e-12
    )
    fd = _fd_grad(net3, x, t, net3.k)
    np.testing.assert_allclose(log_k.grad.numpy(), fd * net3.k, rtol=1e-5, atol=1e-9)


def test_clamped_and_nudged_states(net3):
    x, t = _data(net3)
    eta, beta = 0.3, 0.7
    O_F = net3.outputs(net3.free_state(x))
    VC = net3.clamped_state(x, t, eta)
    np.testing.assert_allclose(net3.outputs(VC).numpy(), (O_F + eta * (t - O_F)).numpy(), atol=1e-12)
    # clamped = Dirichlet solve with the outputs (node outputs here) as extra fixed nodes
    clamped = ph.ResistorNetwork(
        net3.n_nodes,
        net3.edges,
        net3.k,
        sources=np.r_[net3.sources, net3.output_pairs[:, 0]],
        ground=net3.ground,
        output_nodes=[int(net3.free[0])],
    )
    VD = clamped.free_state(torch.cat([x, net3.outputs(VC)], 1))
    np.testing.assert_allclose(VC.numpy(), VD.numpy(), atol=1e-11)
    # nudged: stationary point of P + beta * C_b (per sample)
    Vb = net3.nudged_state(x, t, beta)
    prob = ph.ResistorProblem(net3)
    yb = Vb[:, torch.from_numpy(net3.free)].clone().requires_grad_(True)
    F = prob.objective(yb, x) + beta * 0.5 * ((net3.outputs(prob.full_voltages(yb, x)) - t) ** 2).sum(-1)
    (gF,) = torch.autograd.grad(F.sum(), yb)
    assert float(gF.abs().max()) < 1e-11


def test_equilibrium_propagation_converges_to_exact_gradient(net3):
    x, t = _data(net3)
    _, g = ph.exact_gradient(net3, x, t)
    errs, errs_sym = [], []
    for beta in (1e-1, 1e-2, 1e-3):
        errs.append(1 - ph.cosine(ph.gradient_estimate(net3, x, t, ph.EquilibriumPropagation(beta)), g))
        errs_sym.append(
            1 - ph.cosine(ph.gradient_estimate(net3, x, t, ph.EquilibriumPropagation(beta, True)), g)
        )
    assert errs[-1] < 1e-5 and errs_sym[-1] < 1e-10
    assert errs[0] > errs[1] > errs[2]  # the bias vanishes as beta -> 0 ...
    assert errs_sym[1] < errs[1]  # ... faster for the symmetric estimator (O(beta^2))
    est = ph.gradient_estimate(net3, x, t, ph.EquilibriumPropagation(1e-4))
    np.testing.assert_allclose(est.numpy(), g.numpy(), rtol=1e-3, atol=1e-3 * float(g.abs().max()))


def test_coupled_learning_converges_to_exact_gradient_direction():
    # one output: the eta -> 0 limit is parallel to the exact gradient (factor 2 / S)
    net = ph.random_network(50, n_inputs=2, n_outputs=1, seed=4, output_kind="edges", k_init="uniform")
    x, t = _data(net)
    _, g = ph.exact_gradient(net, x, t)
    etas = (0.3, 0.03, 0.003, 3e-4)
    cos = [ph.cosine(ph.gradient_estimate(net, x, t, ph.CoupledLearning(eta)), g) for eta in etas]
    assert cos[0] < cos[1] < cos[2] < cos[3] and cos[3] > 1 - 1e-5


def test_coupled_learning_limit_with_several_outputs(net3):
    # several outputs: CL tends to the gradient in the metric S^-1 (not the plain MSE gradient); both checked
    x, t = _data(net3)
    lim = ph.coupled_learning_limit(net3, x, t)
    _, g = ph.exact_gradient(net3, x, t)
    cos = [
        ph.cosine(ph.gradient_estimate(net3, x, t, ph.CoupledLearning(eta)), lim) for eta in (0.1, 0.01, 1e-3)
    ]
    assert cos[0] < cos[1] < cos[2] and cos[2] > 1 - 1e-5
    assert 0.0 < ph.cosine(lim, g) < 1.0  # a descent direction, but not the exact gradient's


@pytest.mark.parametrize(
    "rule,lr",
    [(ph.CoupledLearning(0.1), 10.0), (ph.EquilibriumPropagation(0.1), 20.0), (ph.ExactGradient(), 20.0)],
    ids=["cl", "ep", "exact"],
)
def test_training_decreases_cost_and_respects_bounds(rule, lr):
    net = ph.random_network(80, n_inputs=2, n_outputs=2, seed=5)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(24, 2, dtype=f64, generator=g)
    t = torch.stack([0.3 * x[:, 0] + 0.2 * x[:, 1], 0.1 * x[:, 0] + 0.4 * x[:, 1]], 1)
    res = ph.train(net, x, t, rule, steps=150, lr=lr, eval_every=50)
    assert res.eval_cost[-1] < 0.25 * res.eval_cost[0]
    assert res.k.min() >= net.k_min and res.k.max() <= net.k_max
    assert res.steps == [0, 50, 100, 150]
    res2 = ph.train(net, x, t, rule, steps=150, lr=lr, eval_every=50)
    np.testing.assert_array_equal(res.k, res2.k)  # deterministic


def test_minibatch_training_is_seeded():
    net = ph.random_network(40, n_inputs=2, n_outputs=1, seed=6)
    x, t = _data(net, B=20)
    a = ph.train(net, x, t, ph.ExactGradient(), steps=20, lr=5.0, batch_size=4, seed=1).k
    b = ph.train(net, x, t, ph.ExactGradient(), steps=20, lr=5.0, batch_size=4, seed=1).k
    c = ph.train(net, x, t, ph.ExactGradient(), steps=20, lr=5.0, batch_size=4, seed=2).k
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_learning_hessian_exact_formula_matches_autograd_and_gn_at_zero_residual():
    net = ph.random_network(16, n_inputs=2, n_outputs=2, seed=7, k_init="uniform")
    x, t = _data(net, B=3)
    H = ph.learning_hessian(net, x, t, method="exact")
    A = ph.learning_hessian(net, x, t, method="autograd")
    np.testing.assert_allclose(H, A, atol=1e-11 * np.abs(A).max())
    assert np.abs(H - ph.learning_hessian(net, x, t)).max() > 1e-6 * np.abs(A).max()  # GN differs at r != 0
    t0 = net.outputs(net.free_state(x))
    np.testing.assert_allclose(
        ph.learning_hessian(net, x, t0), ph.learning_hessian(net, x, t0, method="exact"), atol=1e-13
    )
    # the gradient of the Hessian's own cost: H e_j = d/dk grad (finite differences of the exact gradient)
    eps, j = 1e-6, 3
    kp, km = net.k.copy(), net.k.copy()
    kp[j] += eps
    km[j] -= eps
    col = (ph.exact_gradient(net, x, t, kp)[1] - ph.exact_gradient(net, x, t, km)[1]).numpy() / (2 * eps)
    np.testing.assert_allclose(H[:, j], col, atol=1e-7 * np.abs(col).max())


def test_mode_alignment_reports_controls():
    net = ph.random_network(40, n_inputs=2, n_outputs=2, seed=8, k_init="uniform")
    x, t = _data(net, B=10)
    a = ph.mode_alignment(net, ph.learning_hessian(net, x, t))
    assert a.phys_eigvals.shape == a.q.shape == (net.n_free,)
    assert np.all(np.diff(a.phys_eigvals) >= 0) and np.all(a.q >= 0)
    assert -1 <= a.spearman <= 1 and -1 <= a.shuffled_spearman <= 1


def test_generators_are_seeded_and_connected():
    g1, g2 = ph.random_graph(300, 3.5, seed=4), ph.random_graph(300, 3.5, seed=4)
    np.testing.assert_array_equal(g1.edges, g2.edges)
    assert not np.array_equal(g1.edges, ph.random_graph(300, 3.5, seed=5).edges)
    assert g1.mean_degree == pytest.approx(3.5, abs=0.01)
    ph.ResistorNetwork(300, g1.edges, sources=[0], output_nodes=[1])  # connected: no FloatingNodesError
    with pytest.raises(ValueError, match="mean_degree"):
        ph.random_graph(100, 7.5)
    assert ph.grid_graph(3, 4).edges.shape == (17, 2)


# ---- bad input ----------------------------------------------------------------------------------------


def test_floating_components_are_named():
    edges = [[0, 1], [1, 2], [3, 4], [5, 6], [6, 7]]
    with pytest.raises(ph.FloatingNodesError, match=r"2 floating component") as exc:
        ph.ResistorNetwork(8, edges, sources=[0], ground=[2], output_nodes=[1])
    assert exc.value.components == [[5, 6, 7], [3, 4]]
    assert "{5, 6, 7}" in str(exc.value) and "{3, 4}" in str(exc.value)
    with pytest.raises(ph.FloatingNodesError, match=r"\{3\}"):  # an isolated node
        ph.ResistorNetwork(4, [[0, 1], [1, 2]], sources=[0], output_nodes=[1])
    with pytest.raises(ValueError, match="needs at least one ground"):
        ph.ResistorNetwork(3, [[0, 1], [1, 2]], sources=[0], output_nodes=[1], input_kind="current")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_nonpositive_or_nonfinite_conductances_refused(bad, net3):
    k = net3.k.copy()
    k[4] = bad
    with pytest.raises(ValueError, match=r"edges \[4\]"):
        ph.ResistorNetwork(net3.n_nodes, net3.edges, k, sources=net3.sources, output_nodes=[net3.free[0]])
    with pytest.raises(ValueError, match=r"edges \[4\]"):
        net3.with_k(k)
    x, t = _data(net3)
    with pytest.raises(ValueError, match=r"edges \[4\]"):
        ph.exact_gradient(net3, x, t, k)
    with pytest.raises(ValueError, match=r"edges \[4\]"):
        ph.ResistorProblem(net3, torch.from_numpy(k))


def test_singular_system_raises_instead_of_nan(net3):
    k = np.full(net3.n_edges, 1e308)  # L_ff overflows to inf: the factorization / solve is not finite
    x, _ = _data(net3)
    with pytest.raises(ph.SingularNetworkError):
        net3.free_state(x, k)
    tiny = net3.k.copy()
    tiny[:] = 1e-320  # denormal conductances: numerically singular
    with pytest.raises(ph.SingularNetworkError):
        net3.free_state(x, tiny)


def test_bad_shapes_ids_and_values(net3):
    with pytest.raises(ValueError, match=r"inputs must have shape \(B, n_inputs\) = \(B, 2\)"):
        net3.free_state(torch.zeros(3, 5, dtype=f64))
    x = torch.zeros(3, 2, dtype=f64)
    x[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"samples \[1\]"):
        net3.free_state(x)
    with pytest.raises(ValueError, match="targets must have shape"):
        ph.exact_gradient(net3, torch.zeros(3, 2, dtype=f64), torch.zeros(3, 1, dtype=f64))
    with pytest.raises(ValueError, match="self-loops"):
        ph.ResistorNetwork(3, [[0, 1], [1, 1]], sources=[0], output_nodes=[1])
    with pytest.raises(ValueError, match="outside"):
        ph.ResistorNetwork(3, [[0, 5]], sources=[0], output_nodes=[1])
    with pytest.raises(ValueError, match="only involve fixed"):
        ph.ResistorNetwork(3, [[0, 1], [1, 2]], sources=[0], ground=[2], output_edges=[[0, 2]])
    with pytest.raises(ValueError, match="linearly dependent"):
        ph.ResistorNetwork(
            4, [[0, 1], [1, 2], [2, 3]], sources=[0], ground=[3], output_nodes=[1], output_edges=[[1, 3]]
        )  # V_1 - V_3 == V_1: the same output twice
    with pytest.raises(ValueError, match="eta"):
        ph.CoupledLearning(0.0)
    with pytest.raises(ValueError, match="beta"):
        ph.EquilibriumPropagation(-0.1)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        do.solve(ph.ResistorProblem(net3), do.LBFGS(), torch.zeros(3, 4, dtype=f64))
