"""Bilevel, the constrained case: inverse optimization through a QP (examples/inverse_qp.py)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import doubleopt as do

torch.set_num_threads(1)
F64 = torch.float64
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "inverse_qp.py"


@pytest.fixture(scope="module")
def ex():
    spec = importlib.util.spec_from_file_location("inverse_qp_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[spec.name]


def test_learned_cost_map_reproduces_observed_decisions(ex):
    data = ex.make_data(n=8, k=5, n_train=64, n_test=64, seed=1)
    model, history = ex.fit(data, steps=200, lr=0.05)
    assert history[-1] < 1e-3 * history[0], (history[0], history[-1])
    with torch.no_grad():
        test0 = float(ex.decision_error(ex.CostModel(data), data.test_features, data.test_decisions))
        test1 = float(ex.decision_error(model, data.test_features, data.test_decisions))
    assert test1 < 1e-2 * test0, (test0, test1)  # held-out instances: the map generalizes
    # the decisions are constrained: some observed decisions sit on a bound, so the KKT backward is exercised
    assert bool(((data.decisions < 1e-9) | (data.decisions > 0.4 - 1e-9)).any())
    assert model.qp.last_solution.summary() == "64 successful"


def test_hypergradient_matches_central_finite_differences(ex):
    data = ex.make_data(n=5, k=3, n_train=6, n_test=1, seed=2)
    model = ex.CostModel(data, tol=1e-12)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # a point where some bounds are active and most coordinates are not
        model.cost.weight.copy_(0.3 * data.W_true + 0.1 * torch.randn(data.W_true.shape, generator=g, dtype=F64))
    z = model(data.features).detach()
    n_active = int(((z < 1e-9) | (z > 0.4 - 1e-9)).sum())
    assert 0.2 * z.numel() < n_active < 0.5 * z.numel()
    ex.decision_error(model, data.features, data.decisions).backward()
    grad = model.cost.weight.grad.clone()
    assert grad.abs().min() > 1e-3  # every entry a real derivative
    W0 = model.cost.weight.detach().clone()

    def loss(W):
        zz = do.qp_solve(data.Q, data.features @ W.T, data.A, data.b, data.G, data.h, tol=1e-13).y
        return float(((zz - data.decisions) ** 2).sum(-1).mean())

    eps = 1e-6
    fd = torch.zeros_like(W0)
    for i in range(W0.shape[0]):
        for j in range(W0.shape[1]):
            E = torch.zeros_like(W0)
            E[i, j] = eps
            fd[i, j] = (loss(W0 + E) - loss(W0 - E)) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)


def test_shared_cost_vector_through_bilevel_optimize():
    """A shared ``q`` (no features) also runs through ``do.bilevel.optimize``: the QP context holds ``q`` as a view
    of the ``nn.Parameter`` (``make_qp_data`` expands it without a copy), so each outer step solves the QPs at the
    current ``q`` and ``do.Implicit()`` differentiates their KKT conditions."""
    g = torch.Generator().manual_seed(0)
    n, B = 5, 16
    eye = torch.eye(n, dtype=F64)
    caps = 0.25 + 0.5 * torch.rand(B, n, generator=g, dtype=F64)  # the instances differ by their caps
    G, h = torch.cat([eye, -eye]), torch.cat([caps, torch.zeros(B, n, dtype=F64)], 1)
    A, b = torch.ones(1, n, dtype=F64), torch.ones(1, dtype=F64)
    z_obs = do.qp_solve(eye, torch.randn(n, generator=g, dtype=F64), A, b, G, h, tol=1e-12).y
    q = torch.nn.Parameter(torch.zeros(n, dtype=F64))
    x = do.problems.make_qp_data(eye, q, A, b, G, h)
    res = do.bilevel.optimize(
        do.problems.QPProblem(),
        do.solvers.QP(),
        x,
        lambda z: ((z - z_obs) ** 2).sum(-1).mean(),
        [q],
        adjoint=do.Implicit(),
        outer_steps=80,
        outer_lr=0.05,
        max_inner_steps=50,
        tol=do.bilevel.ToleranceSchedule(1e-10, 1e-10, 1.0),  # a KKT tolerance for the QP, fixed
    )
    assert res.stopped is None and res.skipped == []
    first, last = res.history[0].outer_loss, res.history[-1].outer_loss
    assert last < 1e-3 * first, (first, last)
    z = do.qp_solve(eye, q.detach(), A, b, G, h, tol=1e-12).y
    assert float(((z - z_obs) ** 2).sum(-1).mean()) < 1e-3 * first


def test_example_bad_input(ex):
    with pytest.raises(ValueError, match="n \\* cap >= 1"):
        ex.make_data(n=2, cap=0.4)
