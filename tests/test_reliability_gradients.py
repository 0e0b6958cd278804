"""With ``throw=False`` a failed instance adds nothing (zero, not NaN) to the gradients of shared parameters and of
the other instances, under Unroll and Truncated, for every solver of the registry (issue 18)."""

import pytest
import torch
from helpers import SOLVERS

import doubleopt as do
from doubleopt.solvers.linesearch import wolfe_line_search

GOOD = [0, 2, 3]


class Shared(do.Problem):
    """f(y; x) = c/2 sum_i s_i (y_i - t_i)^2 + 0.01 max(c, 0) sum y^4 + e exp(3 s.y), x = [t (3), c, e]: a shared
    parameter ``s``; e < 0 makes the instance unbounded below (its iterates overflow)."""

    dim = 3

    def __init__(self):
        super().__init__()
        self.s = torch.nn.Parameter(torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64))

    def objective(self, y, x):
        t, c, e = x[:, :3], x[:, 3], x[:, 4]
        quad = 0.5 * c * (self.s * (y - t) ** 2).sum(-1)
        return quad + 0.01 * c.clamp_min(0) * (y**4).sum(-1) + e * torch.exp(3 * (self.s * y).sum(-1))


class SharedL1(Shared):
    is_composite = True

    def smooth(self, y, x):
        return Shared.objective(self, y, x)

    def nonsmooth(self, y, x):
        return 0.01 * y.abs().sum(-1)

    def prox(self, y, x, step):
        return torch.sign(y) * (y.abs() - 0.01 * step[:, None]).clamp_min(0)


def _context(bad: str | None) -> torch.Tensor:
    x = torch.tensor(
        [[1.0, -1.0, 0.5, 1.0, 0], [0.3, 0.2, -0.7, 2.0, 0], [0.0, 1.0, 2.0, 1.0, 0], [2.0, 2.0, 2.0, 0.5, 0]],
        dtype=torch.float64,
    )
    if bad == "nan":
        x[1, 0] = float("nan")
    elif bad == "inf":
        x[1, 2] = float("inf")
    elif bad == "overflow":
        x[1, 4] = -1.0
    return x


def _run(name, adjoint, x):
    problem = SharedL1() if name in ("ista", "fista") else Shared()
    x = x.clone().requires_grad_(True)
    sol = do.solve(problem, SOLVERS[name](), x, adjoint=adjoint, max_steps=60, throw=False)
    return problem, x, sol


@pytest.mark.parametrize("adjoint", [do.Unroll(), do.Truncated(3)], ids=["unroll", "truncated"])
@pytest.mark.parametrize("bad", ["nan", "inf", "overflow"])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_failed_instance_adds_nothing_to_gradients(name, bad, adjoint):
    x_all = _context(bad)
    problem, x, sol = _run(name, adjoint, x_all)
    assert int(sol.result[1]) != int(do.RESULTS.successful)
    if bad != "overflow":
        assert int(sol.result[1]) == int(do.RESULTS.nonfinite)
    (sol.y[GOOD] ** 2).sum().backward()
    ref_problem, ref_x, ref = _run(name, adjoint, x_all[GOOD])
    (ref.y**2).sum().backward()
    assert torch.equal(sol.result[GOOD], ref.result)
    torch.testing.assert_close(sol.y[GOOD], ref.y, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(problem.s.grad).all()
    torch.testing.assert_close(problem.s.grad, ref_problem.s.grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(x.grad[GOOD], ref_x.grad, rtol=1e-8, atol=1e-10)
    assert torch.equal(x.grad[1], torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_failed_instance_is_constant_in_y_and_value(name):
    """Even a loss over the whole batch gets nothing from a failed instance (its y and value are constants)."""
    problem, x, sol = _run(name, do.Unroll(), _context("nan"))
    assert torch.isnan(sol.value[1])
    loss = (sol.y**2).sum() + torch.nan_to_num(sol.value, nan=0.0).sum()
    loss.backward()
    assert torch.isfinite(problem.s.grad).all() and torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[1], torch.zeros(5, dtype=torch.float64))


def test_sinkhorn_nan_marginal_row():
    fam = do.problems.SphereOT()
    x = fam.sample(4, seed=0)
    a = x.a.clone()
    a[1, 0] = float("nan")
    for adjoint in (do.Unroll(), do.Truncated(2)):
        av = a.clone().requires_grad_(True)
        sol = do.solve(fam, do.solvers.Sinkhorn(), type(x)(a=av, b=x.b), adjoint=adjoint, max_steps=100, throw=False)
        assert int(sol.result[1]) == int(do.RESULTS.nonfinite)
        (sol.y[GOOD] ** 2).sum().backward()
        ref_a = a[GOOD].clone().requires_grad_(True)
        ref = do.solve(fam, do.solvers.Sinkhorn(), type(x)(a=ref_a, b=x.b[GOOD]), adjoint=adjoint, max_steps=100,
                       throw=False)
        (ref.y**2).sum().backward()
        torch.testing.assert_close(sol.y[GOOD], ref.y)
        torch.testing.assert_close(av.grad[GOOD], ref_a.grad)
        assert torch.equal(av.grad[1], torch.zeros_like(av.grad[1]))


@pytest.mark.parametrize("adjoint", [do.Unroll(), None], ids=["unroll", "kkt"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_qp_bad_row(bad, adjoint):
    """Under Unroll and the default KKT (implicit) backward alike."""
    g = torch.Generator().manual_seed(0)
    M = torch.randn(4, 4, generator=g, dtype=torch.float64)
    G, h = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    q0 = torch.randn(4, 4, generator=g, dtype=torch.float64)
    q0[1, 0] = bad

    def run(rows):
        Q = (M @ M.T + torch.eye(4, dtype=torch.float64)).requires_grad_(True)
        q = q0[rows].clone().requires_grad_(True)
        sol = do.qp_solve(Q, q, G=G, h=h, adjoint=adjoint, throw=False)
        return Q, q, sol

    Q, q, sol = run([0, 1, 2, 3])
    assert int(sol.result[1]) == int(do.RESULTS.nonfinite)
    (sol.y[GOOD] ** 2).sum().backward()
    Q2, q2, ref = run(GOOD)
    (ref.y**2).sum().backward()
    torch.testing.assert_close(sol.y[GOOD], ref.y)
    torch.testing.assert_close(Q.grad, Q2.grad)
    torch.testing.assert_close(q.grad[GOOD], q2.grad)
    assert torch.equal(q.grad[1], torch.zeros(4, dtype=torch.float64))


def test_adaptive_rules_at_a_zero_gradient_coordinate():
    """Adam / RMSProp / Adagrad take sqrt of a second moment that is 0 where a coordinate's gradient is 0: the
    unrolled gradient there must be finite (it was 0 * inf = NaN)."""

    class Flat(do.Problem):
        dim = 2

        def objective(self, y, x):
            return ((y[:, :1] - x) ** 2).sum(-1)  # y[:, 1] does not enter: its gradient is exactly 0

    for solver in (do.Adam(lr=0.1), do.RMSProp(lr=0.05), do.RMSProp(lr=0.05, centered=True), do.Adagrad(lr=0.3)):
        x = torch.tensor([[1.0], [2.0]], dtype=torch.float64, requires_grad=True)
        sol = do.solve(Flat(), solver, x, y0=torch.zeros(2, 2, dtype=torch.float64), adjoint=do.Unroll(),
                       max_steps=20, throw=False)
        sol.y.sum().backward()
        assert torch.isfinite(x.grad).all(), type(solver).__name__


def test_wolfe_search_backward_is_finite():
    """The strong-Wolfe search's placeholders (hi = inf, d_hi = NaN) stay out of the unrolled graph."""
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64, requires_grad=True)

    class Quartic(do.Problem):
        dim = 2

        def objective(self, y, x):
            return ((y - x) ** 4).sum(-1) + (y**2).sum(-1)

    p = Quartic()
    y = torch.zeros(2, 2, dtype=torch.float64)
    with torch.enable_grad():
        v, g = p.value_and_grad(y, x)
        ls = wolfe_line_search(p, x, y, v, g, -g, torch.full((2,), 1e-3, dtype=torch.float64))
    ls.y.sum().backward()
    assert torch.isfinite(x.grad).all()
    sol = do.solve(p, do.NonlinearCG(), x, adjoint=do.Unroll(), max_steps=30, throw=False)
    x.grad = None
    sol.y.sum().backward()
    assert torch.isfinite(x.grad).all()
