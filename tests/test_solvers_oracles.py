"""Solvers against oracles: torch.optim (first-order rules), SciPy (L-BFGS, CG), scikit-learn (LASSO)."""

import numpy as np
import pytest
import scipy.optimize
import torch

import doubleopt as do
from doubleopt._tree import tree_index

RULES = [
    ("sgd", lambda: do.GD(lr=0.3), lambda p: torch.optim.SGD(p, lr=0.3)),
    ("momentum", lambda: do.Momentum(lr=0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    (
        "momentum_wd",
        lambda: do.Momentum(lr=0.1, momentum=0.5, weight_decay=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, weight_decay=0.1),
    ),
    (
        "nesterov",
        lambda: do.Nesterov(lr=0.1, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    ),
    ("adagrad", lambda: do.Adagrad(lr=0.2, lr_decay=0.01), lambda p: torch.optim.Adagrad(p, lr=0.2, lr_decay=0.01)),
    ("rmsprop", lambda: do.RMSProp(lr=0.01), lambda p: torch.optim.RMSprop(p, lr=0.01)),
    (
        "rmsprop_centered_mom",
        lambda: do.RMSProp(lr=0.01, momentum=0.5, centered=True),
        lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    ),
    ("adam", lambda: do.Adam(lr=0.05), lambda p: torch.optim.Adam(p, lr=0.05)),
    ("adam_l2", lambda: do.Adam(lr=0.05, weight_decay=0.1), lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1)),
    (
        "adamw",
        lambda: do.Adam(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True),
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
    ),
]


@pytest.mark.parametrize("name,ours,theirs", RULES, ids=[r[0] for r in RULES])
def test_first_order_matches_torch_optim(name, ours, theirs):
    fam = do.problems.LogisticRegression(n_features=4, n_points=50, dtype=torch.float64)
    x = fam.sample(3, seed=7)
    y0 = 0.3 * torch.randn(3, fam.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sol = do.solve(fam, ours(), x, y0, max_steps=50, tol=0.0, throw=False)
    assert (sol.num_steps == 50).all() and (sol.result == do.RESULTS.max_steps_reached).all()
    for i in range(3):
        p = y0[i].clone().requires_grad_(True)
        opt = theirs([p])
        xi = tree_index(x, torch.tensor([i]))
        for _ in range(50):
            opt.zero_grad()
            fam.objective(p[None], xi)[0].backward()
            opt.step()
        torch.testing.assert_close(sol.y[i], p.detach(), atol=1e-6, rtol=0)


def _scipy_min(fam, x, i, y0, method):
    xi = tree_index(x, torch.tensor([i]))

    def fun(w):
        y = torch.as_tensor(w, dtype=torch.float64)[None]
        v, g = fam.value_and_grad(y, xi)
        return float(v[0]), g[0].numpy()

    return scipy.optimize.minimize(
        fun,
        y0[i].numpy(),
        jac=True,
        method=method,
        options={"gtol": 1e-12, "maxiter": 20000, **({"ftol": 1e-16} if method == "L-BFGS-B" else {})},
    ).x


@pytest.mark.parametrize("solver", [do.LBFGS(), do.NonlinearCG()], ids=["lbfgs", "ncg"])
@pytest.mark.parametrize("dim", [2, 6])
def test_rosenbrock_reaches_scipy_optimum(solver, dim):
    fam = do.problems.Rosenbrock(dim=dim, curvature_range=(50.0, 150.0), dtype=torch.float64)
    x = fam.sample(4, seed=dim)
    # n >= 4 has a second local minimum near (-1, 1, ..., 1): start in the global basin so SciPy and we agree
    y0 = (
        fam.init(x)
        if dim == 2
        else 1.0 + 0.4 * torch.randn(4, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    sol = do.solve(fam, solver, x, y0, max_steps=20000, tol=1e-9)
    for i in range(4):
        ref = _scipy_min(fam, x, i, y0, "BFGS")
        np.testing.assert_allclose(sol.y[i].numpy(), ref, atol=1e-6)
    torch.testing.assert_close(sol.y, fam.solution(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("solver", [do.LBFGS(), do.NonlinearCG(), do.Newton()], ids=["lbfgs", "ncg", "newton"])
@pytest.mark.parametrize("dataset", ["synthetic", "breast_cancer"])
def test_logistic_reaches_scipy_optimum(solver, dataset):
    d = 30 if dataset == "breast_cancer" else 5
    fam = do.problems.LogisticRegression(n_features=d, n_points=80, l2=0.05, dataset=dataset, dtype=torch.float64)
    x = fam.sample(3, seed=3)
    sol = do.solve(fam, solver, x, max_steps=5000, tol=1e-10)
    y0 = fam.init(x)
    for i in range(3):
        ref = _scipy_min(fam, x, i, y0, "L-BFGS-B" if isinstance(solver, do.LBFGS) else "CG")
        np.testing.assert_allclose(sol.y[i].numpy(), ref, atol=1e-6)


def test_newton_solves_quadratic_in_one_step():
    fam = do.problems.Quadratic(dim=8, condition_number=1e3, dtype=torch.float64)
    x = fam.sample(5, seed=0)
    sol = do.solve(fam, do.Newton(), x, tol=1e-9)
    assert (sol.num_steps == 1).all()
    torch.testing.assert_close(sol.y, fam.solution(x), atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "solver", [do.FISTA(), do.ISTA(), do.FISTA(step_size=0.1)], ids=["fista", "ista", "fista_fixed"]
)
def test_lasso_matches_sklearn(solver):
    from sklearn.linear_model import Lasso as SkLasso

    fam = do.problems.Lasso(n_measurements=30, n_atoms=50, lam=0.05, dtype=torch.float64)
    x = fam.sample(3, seed=2)
    sol = do.solve(fam, solver, x, max_steps=50000, tol=1e-9)
    D = fam.dictionary.numpy()
    for i in range(3):
        sk = SkLasso(alpha=fam.lam / D.shape[0], fit_intercept=False, tol=1e-14, max_iter=100000)
        sk.fit(D, x.measurements[i].numpy())
        np.testing.assert_allclose(sol.y[i].numpy(), sk.coef_, atol=1e-6)


def test_lasso_backtracking_without_lipschitz_hint():
    class NoHint(do.problems.Lasso):
        def lipschitz_constant(self, x):
            return None  # the base class's "unknown"

    fam = NoHint(n_measurements=20, n_atoms=30, lam=0.1, dtype=torch.float64)
    ref = do.problems.Lasso(n_measurements=20, n_atoms=30, lam=0.1, dtype=torch.float64)
    x = fam.sample(4, seed=0)
    a = do.solve(fam, do.FISTA(), x, max_steps=20000, tol=1e-9)
    b = do.solve(ref, do.FISTA(), x, max_steps=20000, tol=1e-9)
    torch.testing.assert_close(a.y, b.y, atol=1e-7, rtol=0)


def test_quadratic_all_solvers_reach_solution():
    fam = do.problems.Quadratic(dim=5, condition_number=10.0, dtype=torch.float64)
    x = fam.sample(6, seed=4)
    star = fam.solution(x)
    for solver in [
        do.GD(lr=0.15),
        do.GD(line_search=True),
        do.Momentum(lr=0.05),
        do.Nesterov(lr=0.05),
        do.Adam(lr=0.05),
        do.LBFGS(),
        do.NonlinearCG(),
        do.Newton(),
        do.ISTA(),
        do.FISTA(),
    ]:
        sol = do.solve(fam, solver, x, max_steps=20000, tol=1e-8)
        torch.testing.assert_close(sol.y, star, atol=1e-6, rtol=0, msg=type(solver).__name__)


def test_compact_lbfgs_product_matches_two_loop_even_when_steps_shrink():
    from doubleopt.solvers.lbfgs import compact_inverse_hessian_product, two_loop

    g = torch.Generator().manual_seed(0)
    B, m, n = 4, 8, 12
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = M @ M.T + 0.1 * torch.eye(n, dtype=torch.float64)
    s = torch.randn(B, m, n, generator=g, dtype=torch.float64) * torch.logspace(0, -9, m, dtype=torch.float64)[:, None]
    r = s @ A
    rho = 1.0 / (s * r).sum(-1)
    rho[0, :3] = 0.0  # empty slots
    rho[2, 4] = 0.0  # a skipped pair
    gamma = torch.rand(B, generator=g, dtype=torch.float64) + 0.5
    grad = torch.randn(B, n, generator=g, dtype=torch.float64)
    a, b = two_loop(grad, s, r, rho, gamma), compact_inverse_hessian_product(grad, s, r, rho, gamma)
    torch.testing.assert_close(b, a, atol=0, rtol=1e-9)
