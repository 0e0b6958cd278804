"""Implicit vs unrolled vs central finite differences (float64) on ridge and L2-logistic families."""

import pytest
import torch

import doubleopt as do


def _families():
    return {
        "ridge": do.problems.RidgeRegression(n_features=3, n_points=15, l2=0.1, dtype=torch.float64),
        "logistic": do.problems.LogisticRegression(n_features=3, n_points=20, l2=0.1, dtype=torch.float64),
    }


def _loss_of_targets(fam, x, targets, adjoint, solver):
    ctx = do.problems.RegressionContext(x.features, targets)
    sol = do.solve(fam, solver, ctx, max_steps=500, tol=1e-12, adjoint=adjoint)
    w = torch.linspace(-1.0, 1.0, fam.dim, dtype=torch.float64)
    return (sol.y * w).sum() + (sol.y**2).sum()


@pytest.mark.parametrize("name", ["ridge", "logistic"])
def test_implicit_unroll_fd_agree_on_context_gradient(name):
    fam = _families()[name]
    x = fam.sample(3, seed=11)
    grads = {}
    for label, adjoint in [
        ("implicit_cg", do.Implicit()),
        ("implicit_chol", do.Implicit(do.Cholesky())),
        ("unroll", do.Unroll()),
    ]:
        t = x.targets.clone().requires_grad_(True)
        _loss_of_targets(fam, x, t, adjoint, do.LBFGS()).backward()
        grads[label] = t.grad
    # central finite differences on a few coordinates of every instance
    eps = 1e-6
    for i in range(3):
        for j in (0, 5, 11):
            tp, tm = x.targets.clone(), x.targets.clone()
            tp[i, j] += eps
            tm[i, j] -= eps
            with torch.no_grad():
                fd = (
                    _loss_of_targets(fam, x, tp, do.Implicit(), do.LBFGS())
                    - _loss_of_targets(fam, x, tm, do.Implicit(), do.LBFGS())
                ) / (2 * eps)
            for label, g in grads.items():
                assert abs(float(g[i, j]) - float(fd)) < 1e-6, (label, i, j, float(g[i, j]), float(fd))
    torch.testing.assert_close(grads["implicit_cg"], grads["unroll"], atol=1e-7, rtol=1e-6)


def test_implicit_ridge_matches_closed_form_gradient():
    fam = _families()["ridge"]
    x = fam.sample(4, seed=0)
    feats = x.features.clone().requires_grad_(True)
    ctx = do.problems.RegressionContext(feats, x.targets)
    sol = do.solve(fam, do.LBFGS(), ctx, tol=1e-12, adjoint=do.Implicit())
    (sol.y**3).sum().backward()
    g_implicit = feats.grad.clone()
    feats.grad = None
    (fam.solution(ctx) ** 3).sum().backward()
    torch.testing.assert_close(g_implicit, feats.grad, atol=1e-8, rtol=1e-6)


def test_implicit_differentiates_problem_parameters():
    class Shifted(do.Problem):
        dim = 3

        def __init__(self):
            super().__init__()
            self.center = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))

        def objective(self, y, x):
            return 0.5 * (x * (y - self.center) ** 2).sum(-1) + 0.1 * (y**4).sum(-1)

    prob = Shifted()
    x = 1.0 + torch.rand(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for adjoint in [do.Implicit(), do.Unroll()]:
        prob.center.grad = None
        sol = do.solve(prob, do.LBFGS(), x, tol=1e-12, max_steps=300, adjoint=adjoint)
        sol.y.sum().backward()
        if isinstance(adjoint, do.Implicit):
            g_imp = prob.center.grad.clone()
    torch.testing.assert_close(g_imp, prob.center.grad, atol=1e-7, rtol=1e-6)
    assert g_imp.abs().min() > 0


def test_truncated_approaches_implicit_and_is_cheap():
    fam = _families()["logistic"]
    x = fam.sample(3, seed=2)
    out = {}
    for label, adjoint in [("implicit", do.Implicit()), ("trunc", do.Truncated(50))]:
        t = x.targets.clone().requires_grad_(True)
        _loss_of_targets(fam, x, t, adjoint, do.GD(lr=2.0)).backward()
        out[label] = t.grad
    torch.testing.assert_close(out["trunc"], out["implicit"], atol=1e-5, rtol=1e-3)
    with pytest.raises(ValueError, match="k >= 1"):
        do.Truncated(0)


def test_no_graph_when_nothing_requires_grad():
    fam = _families()["ridge"]
    x = fam.sample(2, seed=0)
    sol = do.solve(fam, do.LBFGS(), x, tol=1e-10)
    assert not sol.y.requires_grad


def test_batched_cg_matches_dense_solve():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(4, 6, 6, generator=g, dtype=torch.float64)
    A = M @ M.transpose(-1, -2) + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(4, 6, generator=g, dtype=torch.float64)
    res = do.linalg.batched_cg(lambda v: (A @ v[..., None])[..., 0], b, rtol=1e-12)
    assert res.converged.all()
    torch.testing.assert_close(res.solution, torch.linalg.solve(A, b), atol=1e-9, rtol=1e-9)
