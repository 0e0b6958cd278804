"""Batched log-domain Sinkhorn and the entropic OT families: oracles (POT), gradients, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import doubleopt as do
from doubleopt.problems import DigitsOT, EntropicOT, OTContext, SphereOT
from doubleopt.solvers import Sinkhorn

ot = pytest.importorskip("ot")


def random_ot(B=4, n=7, m=9, eps=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = torch.rand(n, m, generator=g, dtype=torch.float64)
    a = torch.rand(B, n, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(B, m, generator=g, dtype=torch.float64) + 0.1
    return EntropicOT(C, eps=eps), OTContext(a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True))


def test_plan_matches_pot():
    fam, x = random_ot()
    sol = do.solve(fam, Sinkhorn(), x, tol=1e-13, max_steps=20000)
    P = fam.plan(sol.y, x)
    for i in range(x.a.shape[0]):
        ref = ot.sinkhorn(x.a[i].numpy(), x.b[i].numpy(), fam.cost.numpy(), fam.eps, stopThr=1e-15, numItermax=100000)
        np.testing.assert_allclose(P[i].numpy(), ref, atol=1e-10)
    assert (fam.marginal_error(sol.y, x) <= 1e-13).all()


def test_kernel_path_equals_exact_logsumexp_including_fallback():
    fam, x = random_ot(B=6, eps=1e-3)  # cost range / eps ~ 1000: the shifted-kernel sums underflow
    g = torch.Generator().manual_seed(1)
    f = torch.randn(6, fam.n, generator=g, dtype=torch.float64)
    f[0] *= 300.0  # a wild potential: forces the exact path for that row
    gg = torch.randn(6, fam.m, generator=g, dtype=torch.float64)
    exact_rows = torch.logsumexp((gg[:, None, :] - fam.cost) / fam.eps, -1)
    exact_cols = torch.logsumexp((f[:, :, None] - fam.cost) / fam.eps, -2)
    torch.testing.assert_close(fam.lse_rows(gg), exact_rows, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(fam.lse_cols(f), exact_cols, rtol=1e-12, atol=1e-9)
    fam2, x2 = random_ot(B=3, eps=0.2)  # fast path only
    f2 = torch.randn(3, fam2.n, dtype=torch.float64)
    torch.testing.assert_close(fam2.lse_cols(f2), torch.logsumexp((f2[:, :, None] - fam2.cost) / 0.2, -2))


def test_gradient_is_marginal_violation_and_matches_finite_differences():
    fam, x = random_ot(B=3, eps=0.1)
    f = torch.randn(3, fam.n, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(fam.objective(f, x).sum(), f)
    _, analytic = fam.smooth_value_and_grad(f.detach(), x)
    torch.testing.assert_close(auto, analytic)
    P = fam.plan(f.detach(), x)
    torch.testing.assert_close(analytic, P.sum(-1) - x.a)
    torch.testing.assert_close(P.sum(-2), x.b)  # column marginal exact after the c-transform
    assert torch.autograd.gradcheck(lambda v: fam.objective(v, x), (f,))


def test_lbfgs_on_the_semi_dual_agrees_with_sinkhorn():
    fam, x = random_ot(B=3, eps=0.1)
    s = do.solve(fam, Sinkhorn(), x, tol=1e-11, max_steps=5000)
    lb = do.solve(fam, do.LBFGS(), x, tol=1e-9, max_steps=500)
    torch.testing.assert_close(lb.value, s.value, atol=1e-10, rtol=0)
    torch.testing.assert_close(fam.plan(lb.y, x), fam.plan(s.y, x), atol=1e-8, rtol=0)


def test_dual_value_gradient_wrt_measure_is_the_potential():
    """Envelope theorem through an unrolled solve: d F(f*(a); a) / d a = -f* (up to a constant shift)."""
    fam, x = random_ot(B=2, eps=0.1)
    a = x.a.clone().requires_grad_(True)
    xx = OTContext(a, x.b)
    sol = do.solve(fam, Sinkhorn(), xx, tol=1e-12, max_steps=3000, adjoint=do.Unroll())
    (ga,) = torch.autograd.grad(sol.value.sum(), a)
    diff = ga + sol.y.detach()
    torch.testing.assert_close(diff - diff.mean(-1, keepdim=True), torch.zeros_like(diff), atol=1e-8, rtol=0)


def test_bad_inputs_are_named():
    fam, x = random_ot(B=3)
    a = x.a.clone()
    a[1, 0] = 0.0
    a[1] /= a[1].sum()
    with pytest.raises(ValueError, match=r"strictly positive.*\[1\]"):
        do.solve(fam, Sinkhorn(), OTContext(a, x.b))
    with pytest.raises(ValueError, match=r"sum to 1; instances \[2\]"):
        do.solve(fam, Sinkhorn(), OTContext(x.a, torch.cat([x.b[:2], 2 * x.b[2:]])))
    with pytest.raises(ValueError, match="expected a of shape"):
        do.solve(fam, Sinkhorn(), OTContext(x.a[:, :3], x.b))
    with pytest.raises(ValueError, match="OTContext"):
        do.solve(fam, Sinkhorn(), x.a)
    with pytest.raises(ValueError, match="entropic OT problem"):
        do.solve(do.problems.Quadratic(dim=3), Sinkhorn(), do.problems.Quadratic(dim=3).sample(2))
    with pytest.raises(ValueError, match="eps"):
        EntropicOT(torch.rand(3, 3), eps=0.0)
    bad = x.a.clone()
    bad[0, 0] = float("nan")
    sol = do.solve(fam, Sinkhorn(), OTContext(bad, x.b), throw=False, tol=1e-10)
    assert sol.result.tolist() == [do.RESULTS.nonfinite, 0, 0]


def test_families_are_valid_seeded_and_solvable():
    for fam in (DigitsOT(split="test"), SphereOT(n_points=40)):
        x = fam.sample(8, seed=3)
        fam.check_context(x)
        assert (x.a > 0).all() and torch.allclose(x.a.sum(-1), torch.ones(8, dtype=torch.float64))
        torch.testing.assert_close(fam.sample(8, seed=3).b, x.b)
        assert not torch.equal(fam.sample(8, seed=4).b, x.b)
        sol = do.solve(fam, Sinkhorn(), x, tol=1e-4, max_steps=5000)
        assert (fam.marginal_error(sol.y, x) <= 1e-4).all()
    assert not torch.equal(DigitsOT(split="train").measures[:5], DigitsOT(split="test").measures[:5])


def _solve_counting_batches(fam, solver, x, tol):
    """``do.solve`` to ``tol``, recording the batch size of every evaluation of the family."""
    calls = []
    orig = fam.evaluate
    fam.evaluate = lambda f, xx: calls.append(f.shape[0]) or orig(f, xx)
    try:
        return do.solve(fam, solver, x, tol=tol, max_steps=3000), calls
    finally:
        del fam.evaluate


def test_skipping_finished_instances_changes_nothing_but_the_work():
    fam = DigitsOT(split="test")
    x = fam.sample(24, seed=3)
    full = do.solve(fam, Sinkhorn(loop_compact_below=0.0), x, tol=1e-5, max_steps=3000)
    skip, calls = _solve_counting_batches(
        fam, Sinkhorn(skip_tol=1e-5, compact_below=1.0, loop_compact_below=0.0), x, 1e-5
    )
    assert skip.summary() == full.summary() == "24 successful"
    assert torch.equal(skip.num_steps, full.num_steps)
    assert torch.allclose(skip.y, full.y, rtol=0, atol=1e-12)
    # compact_below=1: every step after the first finish runs on the unfinished instances only, so the work
    # is each instance's own step count plus the init and the final evaluation (24 each)
    assert min(calls) < 24
    assert int(full.num_steps.sum()) < sum(calls) <= int(full.num_steps.sum()) + 2 * 24
    with pytest.raises(ValueError, match="skip_tol"):
        Sinkhorn(skip_tol=-1.0)
    with pytest.raises(ValueError, match="compact_below"):
        Sinkhorn(compact_below=2.0)


def test_over_relaxation_reaches_the_same_solution_in_fewer_steps():
    fam = DigitsOT(split="test")
    x = fam.sample(32, seed=4)
    plain = do.solve(fam, Sinkhorn(), x, tol=1e-8, max_steps=5000)
    fast = do.solve(fam, Sinkhorn(relaxation=1.9), x, tol=1e-8, max_steps=5000)
    assert plain.summary() == fast.summary() == "32 successful"
    # the potential is unique up to a constant shift (f + c, g - c): compare centred potentials
    centred = [s.y - s.y.mean(-1, keepdim=True) for s in (plain, fast)]
    torch.testing.assert_close(centred[0], centred[1], rtol=0, atol=1e-6)
    assert bool((fam.marginal_error(fast.y, x) <= 1e-8).all())
    assert int(fast.num_steps.sum()) < 0.65 * int(plain.num_steps.sum())
    # skipping finished instances composes with relaxation (same iterates, less work)
    skip = do.solve(fam, Sinkhorn(relaxation=1.9, skip_tol=1e-8, compact_below=1.0), x, tol=1e-8, max_steps=5000)
    assert torch.equal(skip.num_steps, fast.num_steps)
    torch.testing.assert_close(skip.y, fast.y, rtol=0, atol=1e-12)
    # relaxing from the first step (relaxation_after=0) reaches the same solution too
    now = do.solve(fam, Sinkhorn(relaxation=1.9, relaxation_after=0), x, tol=1e-8, max_steps=5000)
    torch.testing.assert_close(now.y - now.y.mean(-1, keepdim=True), centred[0], rtol=0, atol=1e-6)
    for bad in (0.0, 2.0, -1.0):
        with pytest.raises(ValueError, match="relaxation"):
            Sinkhorn(relaxation=bad)
    with pytest.raises(ValueError, match="relaxation_after"):
        Sinkhorn(relaxation=1.5, relaxation_after=-1)


def test_loop_compaction_gives_the_same_solve_on_shrinking_batches():
    fam = DigitsOT(split="test")
    x = fam.sample(24, seed=5)
    one_batch = Sinkhorn(loop_compact_below=0.0)
    full = do.solve(fam, one_batch, x, tol=1e-6, max_steps=3000)
    comp, calls = _solve_counting_batches(fam, Sinkhorn(loop_compact_below=0.6), x, 1e-6)
    assert comp.summary() == full.summary() == "24 successful"
    assert torch.equal(comp.num_steps, full.num_steps)
    torch.testing.assert_close(comp.y, full.y, rtol=0, atol=1e-12)
    torch.testing.assert_close(comp.stationarity, full.stationarity, rtol=0, atol=1e-12)
    torch.testing.assert_close(comp.value, full.value, rtol=0, atol=1e-12)
    # the batch shrinks below 60% of its size again and again: less work than 24 x the slowest instance
    assert min(calls) < 24 * 0.6 and sum(calls) < 0.8 * 24 * (int(full.num_steps.max()) + 1)
    # a step budget that runs out inside a compacted sub-batch is reported per instance
    short = do.solve(fam, Sinkhorn(loop_compact_below=0.9), x, tol=1e-6, max_steps=int(full.num_steps.median()),
                     throw=False)
    ref = do.solve(fam, one_batch, x, tol=1e-6, max_steps=int(full.num_steps.median()), throw=False)
    assert torch.equal(short.result, ref.result) and torch.equal(short.num_steps, ref.num_steps)
    torch.testing.assert_close(short.y, ref.y, rtol=0, atol=1e-12)
    # under autograd (Unroll) the loop does not compact: the same gradient as plain Sinkhorn
    grads = []
    for solver in (one_batch, Sinkhorn(loop_compact_below=0.9)):
        a = x.a[:6].clone().requires_grad_()
        xs = type(x)(a, x.b[:6])
        sol = do.solve(fam, solver, xs, tol=1e-6, max_steps=3000, adjoint=do.Unroll())
        (grad,) = torch.autograd.grad(sol.value.sum(), a)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)
    assert Sinkhorn().loop_compact_below == 0.85  # on by default
    with pytest.raises(ValueError, match="loop_compact_below"):
        Sinkhorn(loop_compact_below=1.5)
