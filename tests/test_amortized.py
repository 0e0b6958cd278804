"""Amortized solvers, certificates, the safeguard, training, LISTA/ALISTA, Meta OT, VAE inference, demo."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import doubleopt as do
from doubleopt.amortized import (
    ALISTA,
    LISTA,
    FullyAmortized,
    GradientNorm,
    KKTResidual,
    MarginalError,
    PotentialMLP,
    Safeguarded,
    SemiAmortized,
    analytic_weight,
    break_even,
    fit,
    load_checkpoint,
)

F64 = torch.float64


class Exact(nn.Module):
    """The true solution map of the quadratic family (a perfect amortized model)."""

    def forward(self, x):
        return torch.linalg.solve(x.A, x.b)


class LinearB(nn.Module):
    """y = W b + c: a learnable model of the quadratic family's solution map."""

    def __init__(self, n=3):
        super().__init__()
        self.lin = nn.Linear(n, n).to(F64)

    def forward(self, x):
        return self.lin(x.b)


@pytest.fixture
def quad():
    fam = do.problems.Quadratic(dim=3, condition_number=4.0, dtype=F64)
    return fam, fam.sample(16, seed=0)


def test_fully_amortized_is_a_certified_solver(quad):
    fam, x = quad
    sol = do.solve(fam, FullyAmortized(Exact()), x, tol=1e-8)
    torch.testing.assert_close(sol.y, torch.linalg.solve(x.A, x.b))
    assert sol.num_steps.tolist() == [1] * 16

    class Zero(nn.Module):
        def forward(self, x):
            return torch.zeros_like(x.b)

    sol = do.solve(fam, FullyAmortized(Zero()), x, tol=1e-8, throw=False)
    assert (sol.result == do.RESULTS.not_certified).all() and (sol.y == 0).all()
    with pytest.raises(do.SolveError, match="not_certified"):
        do.solve(fam, FullyAmortized(Zero()), x, tol=1e-8)
    # amortized solvers ignore y0, so do.solve does not compute the family's default start for them
    calls = []
    orig = fam.init
    fam.init = lambda x: calls.append(1) or orig(x)
    try:
        do.solve(fam, FullyAmortized(Exact()), x, tol=1e-8)
        do.solve(fam, SemiAmortized(Exact(), do.GD(lr=0.1), steps=2), x, tol=1e-8)
        assert calls == []
        do.solve(fam, do.GD(lr=0.1), x, max_steps=2, throw=False)
        assert calls == [1]
    finally:
        del fam.init


def test_model_output_and_arguments_are_checked(quad):
    fam, x = quad

    class Wrong(nn.Module):
        def forward(self, x):
            return x.b[:, :2]

    with pytest.raises(ValueError, match=r"Wrong must return a \(B, n\) = \(16, 3\)"):
        do.solve(fam, FullyAmortized(Wrong()), x)
    with pytest.raises(ValueError, match="steps > 0 needs a refinement solver"):
        SemiAmortized(Exact(), None, steps=2)
    with pytest.raises(ValueError, match="steps must be an integer"):
        SemiAmortized(Exact(), do.GD(), steps=-1)
    with pytest.raises(TypeError, match="nn.Module"):
        FullyAmortized(lambda x: x)
    with pytest.raises(TypeError, match="fallback"):
        Safeguarded(FullyAmortized(Exact()), fallback=None)


def test_semi_amortized_equals_prediction_plus_k_solver_steps(quad):
    fam, x = quad
    model = LinearB()
    k = 4
    sol = do.solve(fam, SemiAmortized(model, do.GD(lr=0.1), steps=k), x, tol=0.0, throw=False)
    with torch.no_grad():
        y = model(x)
        for _ in range(k):
            y = y - 0.1 * (x.A @ y[..., None])[..., 0] + 0.1 * x.b
    torch.testing.assert_close(sol.y, y)
    assert (sol.result == do.RESULTS.not_certified).all() and sol.num_steps.tolist() == [k + 2] * 16
    iters = SemiAmortized(model, do.GD(lr=0.1), steps=k).iterates(fam, x)
    assert len(iters) == k + 1
    torch.testing.assert_close(iters[-1].detach(), y)
    loose = do.solve(fam, SemiAmortized(model, do.GD(lr=0.1), steps=500), x, tol=1e-6)
    assert loose.successful.all() and (loose.num_steps < 502).all()


def test_unrolled_gradient_through_refinement_matches_finite_differences(quad):
    fam, x = quad
    model = LinearB()
    solver = SemiAmortized(model, do.Momentum(lr=0.05, momentum=0.5), steps=3)

    def loss():
        return do.solve(fam, solver, x, tol=0.0, throw=False, adjoint=do.Unroll()).value.sum()

    w = model.lin.weight
    (g,) = torch.autograd.grad(loss(), w)
    fd = torch.zeros_like(w)
    h = 1e-6
    with torch.no_grad():
        for idx in [(0, 0), (1, 2), (2, 1)]:
            w[idx] += h
            up = loss()
            w[idx] -= 2 * h
            down = loss()
            w[idx] += h
            fd[idx] = (up - down) / (2 * h)
    for idx in [(0, 0), (1, 2), (2, 1)]:
        torch.testing.assert_close(g[idx], fd[idx], rtol=1e-6, atol=1e-8)


def test_safeguard_never_returns_an_uncertified_success_out_of_distribution(quad):
    fam, x_in = quad
    model = LinearB()
    fit(
        FullyAmortized(model),
        fam,
        loss="regression",
        targets=lambda c: torch.linalg.solve(c.A, c.b),
        steps=300,
        lr=0.05,
        batch_size=64,
        progress=False,
        val_every=100,
    )
    ood = fam.sample(8, seed=5)
    ood = do.problems.QuadraticContext(ood.A * 50.0, ood.b * 100.0)  # far outside the training distribution
    x = do.problems.QuadraticContext(torch.cat([x_in.A, ood.A]), torch.cat([x_in.b, ood.b]))
    tol = 1e-2
    cert = GradientNorm()
    r_pred = cert(fam, model(x), x)
    assert (r_pred[16:] > tol).all()  # the model is wrong out of distribution

    starved = Safeguarded(FullyAmortized(model), cert, do.GD(lr=1e-4), tol=tol, fallback_steps=1).solve(fam, x)
    assert not starved.successful[16:].any()
    assert starved.fell_back[16:].all() and not starved.certified[16:].any()
    ok = starved.successful
    assert (cert(fam, starved.y, x)[ok] <= tol).all()  # every success is certified

    guard = Safeguarded(FullyAmortized(model), cert, do.LBFGS(), tol=1e-8, fallback_steps=200)
    sol = guard.solve(fam, x)
    assert sol.successful.all() and (cert(fam, sol.y, x) <= 1e-8).all()
    assert torch.equal(sol.fell_back, ~sol.certified)
    with torch.no_grad():
        pred = model(x)
    torch.testing.assert_close(sol.y[sol.certified], pred[sol.certified])  # certified answers untouched

    bad = do.problems.QuadraticContext(x.A.clone(), x.b.clone())
    bad.b[3, 0] = float("nan")
    sol = Safeguarded(FullyAmortized(model), cert, do.LBFGS(), tol=tol).solve(fam, bad)
    assert sol.result[3] == do.RESULTS.nonfinite and not sol.fell_back[3] and not sol.certified[3]
    with pytest.raises(do.SolveError):
        Safeguarded(FullyAmortized(model), cert, do.GD(lr=1e-4), tol=tol, fallback_steps=1).solve(fam, x, throw=True)


def test_certificates():
    lasso = do.problems.Lasso(n_measurements=10, n_atoms=20, lam=0.1, dtype=F64)
    x = lasso.sample(4, seed=0)
    sol = do.solve(lasso, do.FISTA(), x, tol=1e-10, max_steps=20000)
    assert (GradientNorm()(lasso, sol.y, x) <= 1e-9).all()
    nonzero = sol.y.abs().sum(-1) > 0  # y = 0 is the solution where lambda exceeds ||D^T b||_inf
    assert nonzero.any() and (GradientNorm()(lasso, torch.zeros_like(sol.y), x)[nonzero] > 1e-3).all()
    ot_fam = do.problems.SphereOT(n_points=20, eps=0.1)
    xo = ot_fam.sample(3, seed=0)
    f = torch.zeros(3, 20, dtype=F64)
    torch.testing.assert_close(MarginalError()(ot_fam, f, xo), ot_fam.marginal_error(f, xo))
    with pytest.raises(ValueError, match="kkt_residual"):
        KKTResidual()(lasso, sol.y, x)
    with pytest.raises(ValueError, match="entropic OT"):
        MarginalError()(lasso, sol.y, x)
    nan = torch.full_like(f, float("nan"))
    assert torch.isinf(MarginalError()(ot_fam, nan, xo)).all()


def test_fit_losses_checkpoint_and_break_even(quad, tmp_path):
    fam, _ = quad
    model = LinearB()
    path = tmp_path / "model.safetensors"
    res = fit(
        FullyAmortized(model), fam, loss="objective", steps=60, lr=0.05, progress=False, val_every=20, checkpoint=path
    )
    assert res.history[-1]["val_loss"] < res.history[0]["val_loss"] and path.exists()
    assert path.read_bytes()[:8] != b"\x80\x04\x95"[:8]  # not a pickle
    clone = load_checkpoint(LinearB(), path)
    x = fam.sample(4, seed=9)
    torch.testing.assert_close(clone(x), model(x))

    ref = fit(
        FullyAmortized(LinearB()),
        fam,
        loss="regression",
        reference=do.LBFGS(),
        train_size=64,
        steps=40,
        lr=0.05,
        progress=False,
        val_size=16,
        val_every=20,
    )
    assert ref.history[-1]["val_loss"] < ref.history[0]["val_loss"]
    semi = SemiAmortized(LinearB(), do.GD(lr=0.1), steps=3)
    unr = fit(semi, fam, loss="unrolled", steps=40, lr=0.05, progress=False, val_every=20)
    assert unr.history[-1]["val_loss"] < unr.history[0]["val_loss"]
    with pytest.raises(ValueError, match="targets"):
        fit(FullyAmortized(LinearB()), fam, loss="regression", progress=False)
    with pytest.raises(ValueError, match="loss must be one of"):
        fit(FullyAmortized(LinearB()), fam, loss="mse", progress=False)
    with pytest.raises(ValueError, match="train_size"):
        fit(FullyAmortized(LinearB()), fam, loss="regression", reference=do.LBFGS(), progress=False)
    assert break_even(60.0, 0.01, 0.004) == pytest.approx(10000.0)
    assert break_even(60.0, 0.01, 0.02) == float("inf")


def test_lista_starts_as_ista_and_learns():
    fam = do.problems.Lasso(n_measurements=15, n_atoms=30, lam=0.1)
    x = fam.sample(8, seed=0)
    ista = do.solve(fam, do.ISTA(), x, max_steps=6, tol=0.0, throw=False).y
    torch.testing.assert_close(LISTA(fam, layers=6)(x), ista, atol=1e-5, rtol=1e-5)
    W = analytic_weight(fam.dictionary)
    torch.testing.assert_close(torch.diagonal(W.T @ fam.dictionary), torch.ones(30), atol=1e-5, rtol=0)
    for cls in (LISTA, ALISTA):
        model = cls(fam, layers=5, support_selection=0.02)
        res = fit(
            FullyAmortized(model),
            fam,
            loss="regression",
            targets=lambda c: c.codes,
            steps=60,
            lr=2e-3,
            progress=False,
            val_every=30,
            val_size=64,
        )
        assert res.history[-1]["val_loss"] < 0.9 * res.history[0]["val_loss"], cls.__name__
    with pytest.raises(ValueError, match="LassoContext"):
        LISTA(fam, layers=2)(x.measurements)
    with pytest.raises(TypeError, match="Lasso"):
        LISTA(do.problems.Quadratic(dim=3))


def test_firm_threshold_is_the_piecewise_rule_and_differentiable():
    from doubleopt.amortized import firm_threshold
    from doubleopt.problems import soft_threshold

    g = torch.Generator().manual_seed(0)
    v = 3 * torch.randn(200, dtype=torch.float64, generator=g)
    t1, t2 = 0.7, 2.1
    a = v.abs()
    ref = torch.where(a <= t1, 0.0, torch.where(a <= t2, torch.sign(v) * t2 * (a - t1) / (t2 - t1), v))
    torch.testing.assert_close(firm_threshold(v, t1, t2), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(firm_threshold(v, torch.tensor(t1).double(), torch.tensor(t2).double()), ref)
    torch.testing.assert_close(soft_threshold(v, 0.7), torch.sign(v) * (a - 0.7).clamp_min(0), rtol=0, atol=1e-12)
    tB = torch.rand(200, dtype=torch.float64, generator=g)
    torch.testing.assert_close(soft_threshold(v, tB), torch.sign(v) * (a - tB).clamp_min(0), rtol=0, atol=1e-12)
    # gradients in v and both thresholds vs finite differences (away from the kinks)
    v = v[((a - t1).abs() > 1e-3) & ((a - t2).abs() > 1e-3)].requires_grad_()
    th = torch.tensor([t1, t2], dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda v, th: firm_threshold(v, th[0], th[1]), (v, th))


@pytest.mark.parametrize("cls", [LISTA, ALISTA])
@pytest.mark.parametrize("kind", ["soft", "support", "firm"])
def test_unrolled_lasso_fast_inference_equals_autograd_path(cls, kind):
    fam = do.problems.Lasso(n_measurements=15, n_atoms=30, lam=0.1)
    x = fam.sample(16, seed=1)
    opts = {"soft": {}, "support": {"support_selection": 0.05}, "firm": {"shrinkage": "firm"}}[kind]
    model = cls(fam, layers=4, **opts)
    with torch.no_grad():  # perturb the parameters so every layer differs
        for p in model.parameters():
            p.mul_(1 + 0.1 * torch.rand(p.shape, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():  # thresholds and steps as Python numbers, fused addmm / softshrink / in-place passes
        fast = model(x, return_all=True)
    slow = model(x, return_all=True)  # under autograd: tensor parameters
    assert slow[-1].requires_grad and not fast[-1].requires_grad
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shrinkage must be one of"):
        cls(fam, layers=2, shrinkage="hard")
    with pytest.raises(ValueError, match="support_selection=0"):
        cls(fam, layers=2, shrinkage="firm", support_selection=0.01)


def test_layerwise_loss_trains_every_prefix():
    fam = do.problems.Lasso(n_measurements=20, n_atoms=40, lam=0.05)
    x = fam.sample(256, seed=5)

    def prefix_nmse(model):
        with torch.no_grad():
            return [float(fam.nmse_db(y, x).mean()) for y in model(x, return_all=True)]

    model = ALISTA(fam, layers=6, shrinkage="firm")
    before = prefix_nmse(model)
    res = fit(
        FullyAmortized(model), fam, loss="layerwise", targets=lambda c: c.codes, steps=150, lr=5e-3,
        progress=False, val_every=50, val_size=64,
    )
    after = prefix_nmse(model)
    assert res.history[-1]["val_loss"] < res.history[0]["val_loss"]
    assert all(a < b - 1.0 for a, b in zip(after, before)), (before, after)  # every layer gained > 1 dB
    with pytest.raises(ValueError, match="targets"):
        fit(FullyAmortized(model), fam, loss="layerwise", progress=False)
    with pytest.raises(ValueError, match="return_all"):
        fit(FullyAmortized(nn.Linear(20, 40)), fam, loss="layerwise", targets=lambda c: c.codes, progress=False)
    with pytest.raises(ValueError, match="steps=0"):
        fit(SemiAmortized(model, do.ISTA(), steps=2), fam, loss="layerwise", targets=lambda c: c.codes,
            progress=False)


def test_meta_ot_warm_start_is_certified_and_cuts_iterations():
    fam = do.problems.SphereOT(n_points=30, eps=0.05)
    model = PotentialMLP(30, 30, hidden=64)
    fit(FullyAmortized(model), fam, loss="objective", steps=150, lr=2e-3, progress=False, val_every=50)
    x = fam.sample(32, seed=99)
    cold = do.solve(fam, do.solvers.Sinkhorn(), x, tol=1e-6, max_steps=5000)
    warm = do.solve(fam, SemiAmortized(model, do.solvers.Sinkhorn(), steps=5000), x, tol=1e-6, max_steps=5002)
    assert warm.num_steps.float().mean() < cold.num_steps.float().mean()
    guard = Safeguarded(FullyAmortized(model), MarginalError(), do.solvers.Sinkhorn(), tol=1e-6, fallback_steps=5000)
    sol = guard.solve(fam, x)
    assert sol.successful.all() and (fam.marginal_error(sol.y, x) <= 1e-6).all()
    torch.testing.assert_close(sol.value, cold.value, atol=1e-6, rtol=0)
    rounds = Safeguarded(
        FullyAmortized(model), MarginalError(), do.solvers.Sinkhorn(), tol=1e-6, fallback_steps=5000, round_steps=8
    ).solve(fam, x)  # compaction rounds: same answers (Sinkhorn is memoryless)
    assert rounds.stats["fallback_rounds"] > 1
    torch.testing.assert_close(rounds.y, sol.y)
    torch.testing.assert_close(rounds.num_steps, sol.num_steps)


def test_vae_inference_problem():
    from doubleopt.amortized.vae import DigitsVAE, ELBOProblem, EncoderModel, elbo_context

    torch.manual_seed(0)
    vae = DigitsVAE(latent=3, hidden=16).to(F64)
    images = do.problems.load_dataset("digits", "test", dtype=F64)[0][:6]
    x = elbo_context(images, samples=4, latent=3)
    problem = ELBOProblem(vae.decoder)
    enc = do.solve(problem, FullyAmortized(EncoderModel(vae)), x, throw=False)
    refined = do.solve(
        problem, SemiAmortized(EncoderModel(vae), do.Adam(lr=0.05), steps=50), x, tol=0.0, max_steps=52, throw=False
    )
    assert (refined.value < enc.value).all()
    y = enc.y.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: problem.objective(v, x), (y,))
    with pytest.raises(ValueError, match="noise must be"):
        do.solve(problem, do.Adam(), elbo_context(images, 4, latent=2))


def test_demo_quick(tmp_path):
    from doubleopt.amortized.meta_ot_showcase import run_demo

    rows = run_demo(str(tmp_path), quick=True)
    assert [r["certified_pct"] for r in rows][0] == 100.0 and rows[2]["certified_pct"] == 100.0
    assert (tmp_path / "demo.png").exists() and (tmp_path / "results.json").exists()
