"""Meta OT training options: the swap-averaged potential model and the dual after k Sinkhorn steps."""

from __future__ import annotations

import json
import math

import pytest
import torch

import doubleopt as do
from doubleopt.amortized import FullyAmortized, PotentialMLP, SemiAmortized, fit, objective_loss
from doubleopt.amortized.meta_ot import SwapAveraged
from doubleopt.solvers import Sinkhorn


def _centre(f):
    return f - f.mean(-1, keepdim=True)


class _Exact(torch.nn.Module):
    """The converged potential (Sinkhorn to 1e-12), centred: a perfect Meta OT model."""

    def __init__(self, fam):
        super().__init__()
        self.fam = fam

    def forward(self, x):
        sol = do.solve(self.fam, Sinkhorn(), x, tol=1e-12, max_steps=20000)
        return _centre(sol.y)


class _Zero(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x.a)


def test_swap_averaged_is_the_mean_with_the_swapped_pairs_c_transform():
    fam = do.problems.SphereOT(n_points=30, eps=0.05)
    x = fam.sample(6, seed=3)
    # zero model: the swapped prediction g = 0 gives T_a(0) = eps log a - eps logsumexp(-C / eps)
    out = SwapAveraged(_Zero(), fam)(x)
    t = fam.eps * (torch.log(x.a) - torch.logsumexp(-fam.cost / fam.eps, dim=-1))
    torch.testing.assert_close(out, 0.5 * _centre(t))
    assert out.abs().max() > 1e-3  # not the plain (zero) prediction
    # an exact model stays exact: T_a(g*) = f* up to the gauge
    exact = _Exact(fam)
    with torch.no_grad():
        torch.testing.assert_close(SwapAveraged(exact, fam)(x), exact(x), atol=1e-9, rtol=0)
    # a model with errors that are not the same for (a, b) and (b, a): the average is closer to f* on average
    W = torch.randn(60, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    class _Perturbed(torch.nn.Module):
        def forward(self, x):
            return exact(x) + 0.2 * _centre(torch.tanh(torch.cat([x.a, x.b], -1) * fam.n @ W))

    with torch.no_grad():
        plain_err = (_Perturbed()(x) - exact(x)).norm(dim=-1)
        swap_err = (SwapAveraged(_Perturbed(), fam)(x) - exact(x)).norm(dim=-1)
    assert swap_err.mean() < 0.85 * plain_err.mean()


def test_swap_averaged_checks_the_cost_and_keeps_the_family_out_of_the_state_dict():
    C = torch.rand(5, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="symmetric"):
        SwapAveraged(PotentialMLP(5, 6, hidden=8), do.problems.EntropicOT(C, eps=0.1))
    C = torch.rand(5, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="symmetric"):
        SwapAveraged(PotentialMLP(5, 5, hidden=8), do.problems.EntropicOT(C, eps=0.1))
    with pytest.raises(ValueError, match="entropic OT"):
        SwapAveraged(PotentialMLP(5, 5, hidden=8), do.problems.Quadratic(dim=5))
    fam = do.problems.SphereOT(n_points=20, eps=0.05)
    net = PotentialMLP(20, 20, hidden=8)
    assert SwapAveraged(net, fam).state_dict().keys() == {"model." + k for k in net.state_dict()}


def test_objective_after_k_sinkhorn_steps_differentiates_through_the_refinement():
    fam = do.problems.SphereOT(n_points=30, eps=0.05)
    torch.manual_seed(0)
    model = PotentialMLP(30, 30, hidden=16)
    x = fam.sample(8, seed=1)
    k = 5
    semi = SemiAmortized(model, Sinkhorn(loop_compact_below=0.0), steps=k)
    loss = objective_loss(semi, fam, x)
    # the loss is the dual after k Sinkhorn steps from the prediction
    f = model(x).detach()
    solver = Sinkhorn()
    state = solver.init(fam, f, x)
    for _ in range(k):
        f, state = solver.step(fam, f, x, state)
    torch.testing.assert_close(loss.detach(), fam.objective(f, x).mean())
    # its gradient flows through the k steps: not the plain objective's gradient
    w = model.net[0].weight
    (g_k,) = torch.autograd.grad(loss, w)
    (g_0,) = torch.autograd.grad(objective_loss(FullyAmortized(model), fam, x), w)
    assert g_k.norm() > 0
    assert (g_k - g_0).norm() > 0.1 * g_0.norm()
    # and fit trains with it: the validation loss (the dual after k steps) goes down
    res = fit(semi, fam, loss="objective", steps=30, lr=2e-3, progress=False, val_every=10)
    assert res.history[-1]["val_loss"] < res.history[0]["val_loss"]


def test_meta_ot_study_quick_sphere_uses_the_task_defaults(tmp_path):
    from doubleopt.bench import run_study

    rows = run_study("meta_ot", ["--quick", "--tasks", "sphere", "--out", str(tmp_path)])
    assert rows
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]["sphere"]
    assert summary["swap_average"] is True and summary["unrolled_train_steps"] > 0
    assert summary["regression_steps"] == 0
    # POT is compared like for like: one stopping rule (POT's L2 marginal error) on the same pairs for the rows
    # with a POT ratio, and no POT ratio on the rows that stop on another rule
    pot_rows = [r for r in rows if r["stop"].startswith("L2 marginal error")]
    assert [r["method"] for r in pot_rows][-1] == "POT ot.sinkhorn loop" and len(pot_rows) == 3
    assert len({(r["stop"], r["pairs"]) for r in pot_rows}) == 1
    assert all(r["certified"] == f"{r['pairs']}/{r['pairs']}" for r in pot_rows)
    assert all(math.isnan(r["vs_pot"]) for r in rows if r not in pot_rows)
