"""Parametric QP warm starts: KKT certificate, warm start from the optimum, safeguard, the study's smoke run."""

import pytest
import torch

import doubleopt as do
from doubleopt.amortized import FullyAmortized, KKTResidual, Safeguarded, SemiAmortized
from doubleopt.amortized.qp_warmstart import PrimalDualQP, QPWarmStartNet, WarmStartQP, polish_start
from doubleopt.problems.qp import QPStart, pack_start, qp_kkt_residual, unpack_start
from doubleopt.solvers.qp import QP

TOL = 1e-6


def _family(n=8):
    return PrimalDualQP(do.problems.PortfolioQP(n_assets=n))


def _exact(fam, x):
    return do.solve(fam, WarmStartQP(warm=False, qp=QP(skip_tol=1e-11)), x, tol=1e-11, max_steps=100)


def test_kkt_residual_matches_solver_and_rejects_wrong_points():
    fam = _family()
    x = fam.sample(16, seed=0)
    sol = _exact(fam, x)
    r = KKTResidual()(fam, sol.y, x)
    assert r.shape == (16,) and bool((r <= 1e-9).all())
    # primal z with the multipliers carried by the context: same value
    st = unpack_start(sol.y, x)
    r2 = fam.base.kkt_residual(st.z, x.with_start(st))
    assert torch.allclose(r, r2)
    # a perturbed / infeasible / negative-multiplier point is not certified
    bad = sol.y.clone()
    bad[:, 0] += 0.1
    assert bool((KKTResidual()(fam, bad, x) > 1e-3).all())
    neg = unpack_start(sol.y.clone(), x)
    neg.lam[:, 0] = -1.0
    assert bool((qp_kkt_residual(x, neg.z, neg.lam, neg.nu) >= 1.0).all())
    nan = sol.y.clone()
    nan[0, 0] = float("nan")
    assert torch.isinf(KKTResidual()(fam, nan, x)[0])
    # oracle: the portfolio optimum against scipy (SLSQP) on one instance
    from scipy.optimize import minimize

    Q, q = x.Q[0].numpy(), x.q[0].numpy()
    res = minimize(lambda w: 0.5 * w @ Q @ w + q @ w, torch.full((8,), 1 / 8).numpy(), jac=lambda w: Q @ w + q,
                   bounds=[(0, 0.3)] * 8, constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                   method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    assert abs(float(fam.objective(sol.y[:1], _first(x))) - res.fun) < 1e-8


def _first(x):
    from doubleopt.amortized import index_context

    return index_context(x, torch.tensor([0]), x.q.shape[0])


def test_warm_start_from_exact_solution_converges_at_once():
    fam = _family()
    x = fam.sample(32, seed=1)
    sol = _exact(fam, x)
    cold = do.solve(fam, WarmStartQP(warm=False, qp=QP(skip_tol=TOL)), x, tol=TOL)
    warm = do.solve(fam, WarmStartQP(qp=QP(skip_tol=TOL, warm_start_floor=1e-12)), x, sol.y, tol=TOL)
    assert int(warm.num_steps.max()) == 0 and int(cold.num_steps.min()) >= 4
    # a slightly perturbed optimum, centred, converges in a few steps
    y = sol.y + 1e-3 * torch.randn(sol.y.shape, generator=torch.Generator().manual_seed(0), dtype=sol.y.dtype)
    y = pack_start(QPStart(*(t for t in (lambda s: (s.z, s.s.abs(), s.lam.abs(), s.nu))(unpack_start(y, x)))))
    near = do.solve(fam, WarmStartQP(qp=QP(skip_tol=TOL, warm_start_floor=1e-12), center=1e-3), x, y, tol=TOL)
    assert near.summary() == "32 successful"
    assert float(near.num_steps.float().mean()) < float(cold.num_steps.float().mean())
    # the polish recovers the exact optimum from a perturbed point with the right active set
    pol = polish_start(x, unpack_start(y, x))
    exact = qp_kkt_residual(x, pol.z, pol.lam, pol.nu) < 1e-9
    assert float(exact.float().mean()) >= 0.9  # a degenerate bound (lam ~ s ~ 0) may be misclassified
    polished = do.solve(fam, WarmStartQP(qp=QP(skip_tol=TOL, warm_start_floor=1e-12), center=1e-3, polish=True), x,
                        y, tol=TOL)
    assert polished.summary() == "32 successful"
    assert torch.equal(polished.num_steps == 0, polished.state.polished)
    assert bool((polished.state.polished == exact).all())
    assert bool((polished.state.polish_steps == 1).all())


def test_active_set_rounds_fix_wrong_guesses_and_count_factorizations():
    fam = PrimalDualQP(do.problems.MPCQP(n_states=4, n_inputs=2, horizon=6, u_max=0.1))
    x = fam.sample(64, seed=2)
    sol = _exact(fam, x)
    st = unpack_start(sol.y, x)
    # a guess with the wrong active set on some instances: a saturated input predicted inactive
    lam, s = st.lam.clone(), st.s.clone()
    act = lam > s
    flip = act & (torch.rand(act.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) < 0.3)
    lam[flip], s[flip] = 0.0, 0.05
    guess = pack_start(QPStart(st.z, s, lam, st.nu))
    one = do.solve(fam, WarmStartQP(qp=QP(skip_tol=TOL), center=1e-3, polish=True, polish_tol=TOL), x, guess, tol=TOL)
    many = do.solve(fam, WarmStartQP(qp=QP(skip_tol=TOL), center=1e-3, polish=True, polish_tol=TOL,
                                     polish_rounds=4), x, guess, tol=TOL)
    assert one.summary() == many.summary() == "64 successful"
    n_wrong = int(flip.any(-1).sum())
    assert n_wrong > 5 and int(one.state.polished.sum()) == 64 - n_wrong  # one polish: only right guesses
    assert int(many.state.polished.sum()) > int(one.state.polished.sum())  # the active-set updates fix more
    assert bool((many.state.polish_steps[~flip.any(-1)] == 1).all())  # certified ones are not polished again
    assert int(many.state.polish_steps.max()) <= 4
    assert bool((KKTResidual()(fam, many.y, x) <= TOL).all())
    assert torch.allclose(unpack_start(many.y, x).z, st.z, atol=1e-3)
    with pytest.raises(ValueError, match="polish_rounds"):
        WarmStartQP(polish_rounds=0)


class _Shifted(torch.nn.Module):
    """A deliberately poor model: the exact optimum of the *training* distribution's mean, for every x."""

    def __init__(self, y):
        super().__init__()
        self.register_buffer("y", y)

    def forward(self, x):
        return self.y.expand(x.q.shape[0], -1)


def test_safeguard_never_returns_uncertified_success_even_out_of_distribution():
    fam = _family()
    x_train = fam.sample(64, seed=2)
    model = QPWarmStartNet(*fam.sizes, hidden=16).set_normalization(x_train, _exact(fam, x_train).y)
    # in distribution and far out of it (returns 30x larger, flipped signs)
    x_in = fam.sample(16, seed=3)
    mu_ood = -30.0 * fam.base.returns(fam.sample(16, seed=4))
    x_ood = fam.base.context(mu_ood)
    for mdl in (model, _Shifted(_exact(fam, x_train).y.mean(0, keepdim=True))):
        for x in (x_in, x_ood):
            for amortized in (FullyAmortized(mdl), SemiAmortized(mdl, WarmStartQP(qp=QP(skip_tol=TOL)), steps=2)):
                fallback = WarmStartQP(warm=False, qp=QP(skip_tol=TOL / 10))
                guard = Safeguarded(amortized, KKTResidual(), fallback=fallback, tol=TOL, fallback_steps=60)
                sol = guard.solve(fam, x)
                r = KKTResidual()(fam, sol.y, x)
                ok = sol.result == do.RESULTS.successful
                assert bool((r[ok] <= TOL).all()), "a success must pass the certificate"
                assert bool((sol.certified | sol.fell_back).all())
                assert sol.summary() == "16 successful"
    # a budget too small to certify: failures are reported, never successes
    guard = Safeguarded(FullyAmortized(model), KKTResidual(), fallback=WarmStartQP(warm=False, qp=QP(skip_tol=TOL)),
                        tol=TOL, fallback_steps=2)
    sol = guard.solve(fam, x_ood)
    r = KKTResidual()(fam, sol.y, x_ood)
    assert bool((r[sol.successful] <= TOL).all()) and not bool(sol.successful.all())


def test_bench_qp_warmstart_quick(tmp_path):
    from doubleopt.bench.registry import run_study

    rows = run_study("qp_warmstart", ["--quick", "--out", str(tmp_path)])
    names = [r["method"] for r in rows]
    assert "cold" in names and "OSQP warm (model)" in names
    assert (tmp_path / "results.json").exists() and (tmp_path / "qp_warmstart.png").exists()
    guard = next(r for r in rows if r["method"].startswith("safeguarded"))
    assert guard["successful"] == guard["certified"]
