import math

import pytest
import torch

import doubleopt as do

torch.set_num_threads(1)
F64 = torch.float64


class _Quadratic(do.Problem):
    """f(y; lam) = 1/2 y^T A y + 1/2 sum_i exp(lam_i) y_i^2 - b^T y, strongly convex; y* = (A + diag e^lam)^-1 b."""

    dim = 6

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        M = torch.randn(self.dim, self.dim, generator=g, dtype=F64)
        self.register_buffer("A", M @ M.T / self.dim + 0.5 * torch.eye(self.dim, dtype=F64))
        self.register_buffer("b", torch.randn(self.dim, generator=g, dtype=F64))
        self.lam = torch.nn.Parameter(0.3 * torch.randn(self.dim, generator=g, dtype=F64))

    def objective(self, y, x):
        return 0.5 * ((y @ self.A) * y).sum(-1) + 0.5 * (self.lam.exp() * y * y).sum(-1) - y @ self.b

    def hessian_matrix(self):
        return self.A + torch.diag(self.lam.detach().exp())

    def exact(self):
        return torch.linalg.solve(self.hessian_matrix(), self.b)


def _outer(y):
    return ((y - 0.3) ** 2).sum()


def _hypergrad(prob, adjoint):
    prob.lam.grad = None
    x = torch.zeros(1, 0, dtype=F64)
    sol = do.solve(
        prob, do.LBFGS(), x, y0=torch.zeros(1, prob.dim, dtype=F64), tol=1e-13, max_steps=500, adjoint=adjoint
    )
    _outer(sol.y).backward()
    return prob.lam.grad.clone()


def test_neumann_converges_geometrically_to_implicit_within_bound():
    prob = _Quadratic()
    g_imp = _hypergrad(prob, do.Implicit(do.Cholesky()))
    H = prob.hessian_matrix()
    ev = torch.linalg.eigvalsh(H)
    mu, L = float(ev[0]), float(ev[-1])
    alpha = 1.0 / L
    rho = 1 - alpha * mu
    # hypergradient = -(d grad / d lam)^T H^-1 u with d grad_i / d lam_j = delta_ij e^lam_i y*_i, u = dF/dy*
    ys = prob.exact()
    u = 2 * (ys - 0.3)
    Jmax = float((prob.lam.detach().exp() * ys).abs().max())
    v_norm = float(torch.linalg.solve(H, u).norm())
    errs = []
    for k in [0, 5, 10, 20, 40, 80]:
        err = float((_hypergrad(prob, do.Neumann(terms=k, scale=alpha)) - g_imp).norm())
        bound = Jmax * rho ** (k + 1) * v_norm
        assert err <= bound * (1 + 1e-6) + 1e-10, (k, err, bound)
        errs.append(err)
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-3 * errs[0]


def test_neumann_and_implicit_match_central_finite_differences():
    prob = _Quadratic(seed=1)
    L = float(torch.linalg.eigvalsh(prob.hessian_matrix())[-1])
    g_neu = _hypergrad(prob, do.Neumann(terms=400, scale=1.0 / L))
    g_imp = _hypergrad(prob, do.Implicit())
    eps = 1e-6
    fd = torch.zeros_like(g_neu)
    with torch.no_grad():
        for i in range(prob.dim):
            vals = []
            for s in (1, -1):
                prob.lam[i] += s * eps
                vals.append(float(_outer(prob.exact())))
                prob.lam[i] -= s * eps
            fd[i] = (vals[0] - vals[1]) / (2 * eps)
    torch.testing.assert_close(g_imp, fd, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g_neu, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"terms": -1}, "terms >= 0"),
        ({"terms": 2.5}, "terms >= 0"),
        ({"scale": 0.0}, "scale > 0"),
        ({"scale": -1.0}, "scale > 0"),
        ({"scale": float("nan")}, "scale > 0"),
    ],
)
def test_neumann_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        do.Neumann(**kwargs)


def test_optimize_reaches_known_optimum_and_records_steps():
    prob = _Quadratic(seed=2)
    target = prob.exact().detach() * 0.8  # shrunk solution: larger L2 weights bring y* towards it

    def outer(y):
        return ((y - target) ** 2).sum()

    x = torch.zeros(1, 0, dtype=F64)
    res = do.bilevel.optimize(
        prob,
        do.LBFGS(),
        x,
        outer,
        [prob.lam],
        outer_steps=60,
        outer_lr=0.05,
        tol=do.bilevel.ToleranceSchedule(1e-4, 1e-10, 0.8),
    )
    h = res.history
    assert len(h) == 60 and res.stopped is None and len(res.rejected) <= 3
    assert all(r.applied for r in h if not r.rejected_previous)
    assert h[-1].outer_loss < 0.05 * h[0].outer_loss
    assert h[0].tol == 1e-4 and h[-1].tol < h[0].tol and all(a.tol >= b.tol for a, b in zip(h, h[1:]))
    assert all(r.inner_steps >= 0 and r.time >= 0 for r in h)
    assert all(r.hypergrad_norm >= 0 and r.adjoint_matvecs > 0 and r.adjoint_residual < 1e-6 for r in h if r.applied)
    # warm start: late inner solves start near the previous solution and take fewer steps than a cold one
    cold = do.solve(prob, do.LBFGS(), x, tol=h[-1].tol, max_steps=1000)
    assert h[-1].inner_steps < int(cold.num_steps.max())


def test_optimize_skips_steps_whose_inner_solve_fails():
    prob = _Quadratic(seed=3)
    before = prob.lam.detach().clone()
    x = torch.zeros(2, 0, dtype=F64)
    with pytest.warns(RuntimeWarning, match="failed 3 times in a row"):
        res = do.bilevel.optimize(prob, do.GD(lr=1e-3), x, _outer, [prob.lam], outer_steps=10, max_inner_steps=2)
    assert res.skipped == [0, 1, 2] and res.solution is None and "3 times" in res.stopped
    assert all(r.failures == {0: "max_steps_reached", 1: "max_steps_reached"} for r in res.history)
    assert all(math.isnan(r.outer_loss) for r in res.history)
    torch.testing.assert_close(prob.lam.detach(), before, rtol=0, atol=0)


def test_optimize_stops_on_nonfinite_hypergradient():
    prob = _Quadratic(seed=4)
    before = prob.lam.detach().clone()
    x = torch.zeros(1, 0, dtype=F64)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        res = do.bilevel.optimize(prob, do.LBFGS(), x, lambda y: (y * float("inf")).sum(), [prob.lam], outer_steps=5)
    assert len(res.history) == 1 and not res.history[0].applied and "outer step 0" in res.stopped
    torch.testing.assert_close(prob.lam.detach(), before, rtol=0, atol=0)


def test_optimize_bad_arguments():
    prob = _Quadratic()
    x = torch.zeros(1, 0, dtype=F64)
    with pytest.raises(ValueError, match="outer_steps"):
        do.bilevel.optimize(prob, do.LBFGS(), x, _outer, [prob.lam], outer_steps=0)
    with pytest.raises(ValueError, match="outer_lr"):
        do.bilevel.optimize(prob, do.LBFGS(), x, _outer, [prob.lam], outer_lr=-1.0)
    with pytest.raises(ValueError, match="ToleranceSchedule"):
        do.bilevel.ToleranceSchedule(start=1e-8, end=1e-3)


def _digits_val_loss(prob, train, val, tol=1e-13):
    with torch.no_grad():
        sol = do.solve(prob, do.LBFGS(), train, tol=tol, max_steps=3000)
        return float(prob.cross_entropy(sol.y, val))


@pytest.mark.parametrize("per_feature", [True, False])
def test_digits_hypergradient_matches_central_finite_differences(per_feature):
    train, val = do.bilevel.digits_split(150, 100, seed=0)
    prob = do.bilevel.DigitsL2(per_feature=per_feature)
    m = 64 if per_feature else 1
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        prob.log_l2.copy_(-3.0 + torch.randn(m, generator=g, dtype=F64))
    sol = do.solve(prob, do.LBFGS(), train, tol=1e-13, max_steps=3000)
    prob.cross_entropy(sol.y, val).backward()
    hg = prob.log_l2.grad.clone()
    assert hg.shape == (m,) and hg.abs().max() > 0
    eps = 1e-4
    base = prob.log_l2.detach().clone()
    for _ in range(3):  # directional derivatives along random directions
        d = torch.randn(m, generator=g, dtype=F64)
        d = d / d.norm()
        vals = []
        for s in (1, -1):
            with torch.no_grad():
                prob.log_l2.copy_(base + s * eps * d)
            vals.append(_digits_val_loss(prob, train, val))
        fd = (vals[0] - vals[1]) / (2 * eps)
        assert fd == pytest.approx(float(hg @ d), rel=1e-5, abs=1e-9)
    with torch.no_grad():
        prob.log_l2.copy_(base)


def test_digits_short_bilevel_run_lowers_validation_loss():
    train, val = do.bilevel.digits_split(150, 100, seed=1)
    prob = do.bilevel.DigitsL2(per_feature=True, log_l2=0.0)  # over-regularized start
    start = _digits_val_loss(prob, train, val)
    res = do.bilevel.optimize(
        prob,
        do.LBFGS(),
        train,
        lambda y: prob.cross_entropy(y, val),
        [prob.log_l2],
        adjoint=do.Implicit(),
        outer_steps=10,
        outer_lr=0.3,
        tol=do.bilevel.ToleranceSchedule(1e-4, 1e-8, 0.5),
    )
    assert res.stopped is None and res.skipped == []
    end = _digits_val_loss(prob, train, val)
    assert end < 0.8 * start, (start, end)
    assert res.history[-1].outer_loss < res.history[0].outer_loss


def test_descent_test_rejects_uphill_steps_and_keeps_the_accepted_losses_decreasing():
    prob = _Quadratic(seed=2)
    target = prob.exact().detach() * 0.8
    x = torch.zeros(1, 0, dtype=F64)
    schedule = do.bilevel.ToleranceSchedule(1e-6, 1e-10, 0.5)

    def run(slack):
        prob.lam.data.copy_(_Quadratic(seed=2).lam.data)
        return do.bilevel.optimize(prob, do.LBFGS(), x, lambda y: ((y - target) ** 2).sum(), [prob.lam],
                                   outer_steps=25, outer_lr=30.0, optimizer=torch.optim.SGD, tol=schedule,
                                   descent_slack=slack)

    plain, safe = run(None), run(1.0)
    plain_losses = [r.outer_loss for r in plain.history]
    assert any(b > a for a, b in zip(plain_losses, plain_losses[1:]))  # lr 30 overshoots without the test
    assert safe.rejected  # ... and the test catches it
    kept = [r for r in safe.history if not r.rejected_previous and math.isfinite(r.outer_loss)]
    for a, b in zip(kept, kept[1:]):
        assert b.outer_loss <= a.outer_loss + (a.tol + b.tol) * (1 + abs(a.outer_loss))
    assert kept[-1].outer_loss < plain_losses[0]
    with pytest.raises(ValueError, match="descent_slack"):
        do.bilevel.optimize(prob, do.LBFGS(), x, _outer, [prob.lam], descent_slack=-1.0)


def test_fixed_point_adjoint_in_the_outer_loop_is_warm_started():
    prob = _Quadratic(seed=4)
    L = float(torch.linalg.eigvalsh(prob.hessian_matrix()).max())
    x = torch.zeros(1, 0, dtype=F64)
    res = do.bilevel.optimize(prob, do.LBFGS(), x, _outer, [prob.lam], outer_steps=15, outer_lr=0.02,
                              adjoint=do.FixedPoint(iterations=3, scale=1.0 / L))
    resid = [r.adjoint_residual for r in res.history if r.applied]
    matvecs = [r.adjoint_matvecs for r in res.history if r.applied]
    assert matvecs[0] == 3 and set(matvecs[1:]) == {4}  # from zero the first iteration is free; +1 for the residual
    assert resid[-1] < 0.1 * resid[0]  # 3 iterations per step, but continued across steps


def test_unrolled_outer_loop_starts_cold_and_matches_implicit_direction():
    prob = _Quadratic(seed=5)
    x = torch.zeros(1, 0, dtype=F64)
    res = do.bilevel.optimize(prob, do.GD(lr=0.2), x, _outer, [prob.lam], outer_steps=4, outer_lr=0.01,
                              adjoint=do.Unroll(), tol=do.bilevel.ToleranceSchedule(1e-9, 1e-9, 1.0),
                              max_inner_steps=3000)
    assert all(r.applied for r in res.history) and all(r.inner_steps > 10 for r in res.history)


def test_outer_loss_without_a_graph_is_a_clear_error():
    prob = _Quadratic(seed=5)
    x = torch.zeros(1, 0, dtype=F64)
    with pytest.raises(ValueError, match="does not depend on the hyperparameters"):
        do.bilevel.optimize(prob, do.LBFGS(), x, lambda y: (y.detach() ** 2).sum(), [prob.lam], outer_steps=2)
