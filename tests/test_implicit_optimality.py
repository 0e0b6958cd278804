"""The declared optimality interface: implicit hypergradients of composite (LASSO) problems through the gradient
mapping, GMRES / LU / fixed-point adjoints, and the adjoint memory (warm starts, costs)."""

import pytest
import torch

import doubleopt as do

torch.set_num_threads(1)
F64 = torch.float64


def _lasso(seed=0):
    fam = do.problems.Lasso(n_measurements=12, n_atoms=20, lam=0.05, dtype=F64, dictionary_seed=seed)
    return fam, fam.sample(3, seed=seed)


def _solve(fam, x, adjoint=None, tol=1e-13, max_steps=20000):
    return do.solve(fam, do.FISTA(), x, tol=tol, max_steps=max_steps, adjoint=adjoint)


def _weights(y):
    return torch.linspace(-1.0, 1.0, y.numel(), dtype=F64).reshape(y.shape)


def _grad(fam, x, adjoint):
    b = x.measurements.detach().clone().requires_grad_(True)
    sol = _solve(fam, type(x)(b, x.codes), adjoint)
    (sol.y * _weights(sol.y)).sum().backward()
    return b.grad


def _central_fd(fam, x, eps=1e-6):
    b0 = x.measurements.detach()
    g = torch.zeros_like(b0)
    for i in range(b0.shape[0]):
        for j in range(b0.shape[1]):
            vals = []
            for s in (eps, -eps):
                b = b0.clone()
                b[i, j] += s
                y = _solve(fam, type(x)(b, x.codes)).y
                vals.append(float((y * _weights(y)).sum()))
            g[i, j] = (vals[0] - vals[1]) / (2 * eps)
    return g


def test_composite_residual_is_the_gradient_mapping_and_vanishes_at_the_solution():
    fam, x = _lasso()
    sol = _solve(fam, x)
    r = fam.optimality(sol.y, x)
    assert r.shape == sol.y.shape
    assert float(r.abs().max()) < 1e-9
    # away from the solution it is (y - prox(y - grad/L, 1/L)) * L
    y = sol.y + 0.1
    L = fam.lipschitz_constant(x)
    _, g = fam.smooth_value_and_grad(y, x)
    expected = (y - do.problems.lasso.soft_threshold(y - g / L, fam.lam / L)) * L
    torch.testing.assert_close(fam.optimality(y, x), expected)
    assert not fam.optimality_is_gradient


@pytest.mark.parametrize(
    "adjoint",
    [do.Implicit(), do.Implicit(do.LU()), do.Implicit(do.GMRES(rtol=1e-12, restart=5))],
    ids=["gmres-default", "lu", "gmres-restart5"],
)
def test_lasso_implicit_hypergradient_matches_central_finite_differences(adjoint):
    fam, x = _lasso()
    g = _grad(fam, x, adjoint)
    fd = _central_fd(fam, x)
    assert float((g - fd).norm() / fd.norm()) < 1e-6


def test_lasso_implicit_equals_unrolled_fista_at_convergence():
    fam, x = _lasso(seed=1)
    g_imp = _grad(fam, x, do.Implicit(do.LU()))
    b = x.measurements.detach().clone().requires_grad_(True)
    sol = do.solve(fam, do.ISTA(), type(x)(b, x.codes), tol=0.0, max_steps=3000, adjoint=do.Unroll(), throw=False)
    (sol.y * _weights(sol.y)).sum().backward()
    assert float((b.grad - g_imp).norm() / g_imp.norm()) < 1e-6


def test_fixed_point_adjoint_with_scale_one_over_L_converges_to_implicit_on_lasso():
    fam, x = _lasso()
    g_imp = _grad(fam, x, do.Implicit(do.LU()))
    alpha = 1.0 / float(fam.lipschitz_constant(x))
    grads = [_grad(fam, x, do.Neumann(terms=k, scale=alpha)) for k in (0, 20, 400)]
    errs = [float((g - g_imp).norm() / g_imp.norm()) for g in grads]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-6


def test_cg_and_cholesky_refuse_a_non_symmetric_residual_with_a_clear_error():
    fam, x = _lasso()
    b = x.measurements.detach().clone().requires_grad_(True)
    for ls in (do.CG(), do.Cholesky()):
        with pytest.raises(ValueError, match="not a gradient"):
            _solve(fam, type(x)(b, x.codes), do.Implicit(ls))


def test_batched_gmres_matches_dense_solve_and_reports_per_instance_convergence():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 9, 9, generator=g, dtype=F64) + 4 * torch.eye(9, dtype=F64)
    b = torch.randn(4, 9, generator=g, dtype=F64)
    b[2] = 0.0  # a zero right-hand side converges at once
    res = do.linalg.batched_gmres(lambda v: (A @ v[..., None])[..., 0], b, rtol=1e-12, restart=5)
    torch.testing.assert_close(res.solution, torch.linalg.solve(A, b))
    assert res.converged.all()
    capped = do.linalg.batched_gmres(lambda v: (A @ v[..., None])[..., 0], b, rtol=1e-14, restart=2, max_iter=3)
    assert not capped.converged[0] and capped.converged[2]
    with pytest.raises(ValueError, match="restart"):
        do.linalg.batched_gmres(lambda v: v, b, restart=0)


def _ridge():
    fam = do.problems.RidgeRegression(n_features=6, n_points=30, dtype=F64)
    return fam, fam.sample(2, seed=3)


def _ridge_grad(fam, x, adjoint):
    t = x.targets.detach().clone().requires_grad_(True)
    sol = do.solve(fam, do.LBFGS(), type(x)(x.features, t), tol=1e-12, adjoint=adjoint)
    (sol.y * _weights(sol.y)).sum().backward()
    return t.grad


def test_adjoint_memory_warm_starts_cg_and_records_its_cost():
    fam, x = _ridge()
    memory = do.adjoint.AdjointMemory()
    g1 = _ridge_grad(fam, x, do.Implicit(do.CG(rtol=1e-10), memory=memory))
    first = memory.matvecs
    assert memory.solves == 1 and first > 0 and memory.residual < 1e-9
    g2 = _ridge_grad(fam, x, do.Implicit(do.CG(rtol=1e-10), memory=memory))
    assert memory.solves == 2 and memory.matvecs < first  # started from the previous adjoint
    torch.testing.assert_close(g1, g2)
    torch.testing.assert_close(g1, _ridge_grad(fam, x, do.Implicit(do.Cholesky())))


def test_fixed_point_with_memory_continues_the_iteration():
    fam, x = _ridge()
    ref = _ridge_grad(fam, x, do.Implicit(do.Cholesky()))
    L = float(torch.linalg.eigvalsh(fam.hessian(torch.zeros(2, fam.dim, dtype=F64), x)).max())
    memory = do.adjoint.AdjointMemory()
    errs = []
    for _ in range(4):
        gk = _ridge_grad(fam, x, do.FixedPoint(iterations=5, scale=1.0 / L, memory=memory))
        errs.append(float((gk - ref).norm() / ref.norm()))
    assert errs == sorted(errs, reverse=True) and errs[-1] < 0.5 * errs[0]
    # cold, 20 iterations = Neumann with 19 terms = the warm-started run's fourth pass
    cold = _ridge_grad(fam, x, do.FixedPoint(iterations=20, scale=1.0 / L))
    torch.testing.assert_close(cold, _ridge_grad(fam, x, do.Neumann(terms=19, scale=1.0 / L)))
    torch.testing.assert_close(cold, gk)


def test_fixed_point_argument_checks():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="iterations"):
            do.FixedPoint(iterations=bad)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            do.FixedPoint(scale=bad)


def test_every_core_hook_is_declared_on_the_problem_base_class():
    for name in ("optimality", "optimality_is_gradient", "implicit_solution", "lipschitz_constant"):
        assert hasattr(do.Problem, name)
    p = do.problems.RidgeRegression(n_features=2, n_points=3, dtype=F64)
    assert p.implicit_solution(torch.zeros(1, 2), None, None) is None and p.lipschitz_constant(None) is None


def test_entropic_ot_implicit_hypergradient_matches_finite_differences_along_the_simplex():
    # the dual's residual is the row-marginal error, zero at Sinkhorn's fixed point; the potentials are defined up
    # to a constant, so gradients wrt the measure a are compared along directions that keep a on the simplex
    g = torch.Generator().manual_seed(0)
    fam = do.problems.EntropicOT(torch.rand(5, 6, generator=g, dtype=F64), eps=0.1)
    a = torch.softmax(torch.randn(2, 5, generator=g, dtype=F64), -1)
    b = torch.softmax(torch.randn(2, 6, generator=g, dtype=F64), -1)

    def cost(a_, adjoint=None):
        x = do.problems.OTContext(a_, b)
        sol = do.solve(fam, do.solvers.Sinkhorn(), x, tol=1e-12, max_steps=10000, adjoint=adjoint)
        return fam.transport_cost(sol.y, x).sum()

    d = torch.randn(2, 5, generator=g, dtype=F64)
    d = d - d.mean(-1, keepdim=True)
    fd = (cost(a + 1e-6 * d) - cost(a - 1e-6 * d)) / 2e-6
    for adjoint in (do.Implicit(), do.Implicit(do.Cholesky())):
        ar = a.clone().requires_grad_(True)
        cost(ar, adjoint).backward()
        assert abs(float((ar.grad * d).sum() - fd)) < 1e-6 * abs(float(fd))


class _SharedScale(do.Problem):
    """0.5 ||y - s * x||^2 + 0.5 ||y||^2 with a shared parameter s: y* = s x / 2."""

    dim = 3

    def __init__(self):
        super().__init__()
        self.s = torch.nn.Parameter(torch.tensor(1.5, dtype=F64))

    def objective(self, y, x):
        return 0.5 * ((y - self.s * x) ** 2).sum(-1) + 0.5 * (y * y).sum(-1)


@pytest.mark.parametrize("adjoint", [do.Implicit(), do.Implicit(do.Cholesky()), do.Neumann(terms=30, scale=0.5)],
                         ids=["cg", "cholesky", "neumann"])
def test_a_failed_instance_adds_nothing_to_implicit_gradients(adjoint):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=g, dtype=F64)
    bad = x.clone()
    bad[2, 0] = float("nan")
    grads = []
    for ctx, keep in ((bad, [0, 1, 3]), (x[[0, 1, 3]], [0, 1, 2])):
        prob = _SharedScale()
        ctx = ctx.clone().requires_grad_(True)
        sol = do.solve(prob, do.LBFGS(), ctx, tol=1e-12, adjoint=adjoint, throw=False)
        (sol.y[keep] ** 2).sum().backward()
        grads.append((prob.s.grad.clone(), ctx.grad[keep].clone()))
        if ctx.shape[0] == 4:
            assert sol.result[2] == do.RESULTS.nonfinite and torch.all(ctx.grad[2] == 0)
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_truncated_needs_an_integer_k():
    for bad in (0, 1.5, "2", True):
        with pytest.raises(ValueError, match="integer k"):
            do.Truncated(bad)


def test_no_graph_when_nothing_requires_grad_even_with_an_autograd_gradient():
    class Sphere(do.Problem):  # the base class's autograd gradient makes its own leaf from y
        dim = 3

        def objective(self, y, x):
            return ((y - x) ** 2).sum(-1)

    x = torch.ones(2, 3, dtype=F64)
    sol = do.solve(Sphere(), do.LBFGS(), x, tol=1e-10)
    assert not sol.y.requires_grad
    xr = x.clone().requires_grad_(True)
    sol = do.solve(Sphere(), do.LBFGS(), xr, tol=1e-10)
    assert sol.y.requires_grad
    sol.y.sum().backward()
    torch.testing.assert_close(xr.grad, torch.ones_like(xr))
