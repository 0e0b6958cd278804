"""The speed paths of L-BFGS and its line search give the same answers as the plain computations."""

import torch

import doubleopt as do
from doubleopt._tree import tree_index
from doubleopt.solvers.linesearch import armijo_backtracking


class _Counting(do.problems.LogisticRegression):
    """Records the batch size of every evaluation."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.sizes: list[int] = []

    def smooth_value_and_grad(self, y, x):
        self.sizes.append(y.shape[0])
        return super().smooth_value_and_grad(y, x)


def _line_search_case():
    fam = _Counting(n_features=4, n_points=40, dtype=torch.float64)
    x = fam.sample(6, seed=3)
    y = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    value, grad = fam.value_and_grad(y, x)
    step0 = torch.tensor([1.0, 50.0, 1.0, 400.0, 1.0, 1.0], dtype=torch.float64)  # two must backtrack
    return fam, x, y, value, grad, -grad, step0


def test_backtracking_retries_only_failed_instances_and_matches_single_searches():
    fam, x, y, value, grad, d, step0 = _line_search_case()
    fam.sizes.clear()
    out = armijo_backtracking(fam, x, y, value, grad, d, step0)
    assert fam.sizes[0] == 6 and len(fam.sizes) > 1 and max(fam.sizes[1:]) <= 2  # retries on the subset only
    assert (out.status == 0).all() and out.step[1] < 50 and out.step[3] < 400 and out.step[0] == 1
    for i in range(6):
        idx = torch.tensor([i])
        one = armijo_backtracking(fam, tree_index(x, idx), y[idx], value[idx], grad[idx], d[idx], step0[idx])
        torch.testing.assert_close(one.step[0], out.step[i], atol=0, rtol=0)
        torch.testing.assert_close(one.y[0], out.y[i], atol=1e-14, rtol=0)
        torch.testing.assert_close(one.value[0], out.value[i], atol=1e-14, rtol=0)
        torch.testing.assert_close(one.grad[0], out.grad[i], atol=1e-14, rtol=0)


def test_backtracking_on_subsets_is_differentiable():
    fam, x, y, value, grad, d, step0 = _line_search_case()
    yv = y.clone().requires_grad_(True)
    v, g = fam.value_and_grad(yv, x)
    out = armijo_backtracking(fam, x, yv, v, g, -g, step0)
    (gy,) = torch.autograd.grad(out.value.sum(), yv)
    assert torch.isfinite(gy).all() and gy.abs().sum() > 0


class _BatchedBuffer(do.Problem):
    """A problem holding per-instance data in a buffer (not in x): the line search must not subset it."""

    def __init__(self, centers):
        super().__init__()
        self.register_buffer("centers", centers)

    def objective(self, y, x):
        r = y - self.centers
        return (r**4).sum(-1) + 0.5 * (r * r).sum(-1)


def test_backtracking_keeps_full_batches_for_problems_with_batched_buffers():
    centers = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    prob = _BatchedBuffer(centers)
    y = torch.zeros(5, 3, dtype=torch.float64)
    value, grad = prob.value_and_grad(y, None)
    step0 = torch.tensor([1.0, 30.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    out = armijo_backtracking(prob, None, y, value, grad, -grad, step0)
    assert (out.status == 0).all() and (out.value < value).all()
    sol = do.solve(prob, do.LBFGS(), None, y, tol=1e-9)
    torch.testing.assert_close(sol.y, centers, atol=1e-7, rtol=0)


def test_lbfgs_state_stores_scaled_pairs_with_unit_curvature():
    fam = do.problems.LogisticRegression(n_features=3, n_points=30, dtype=torch.float64)
    x = fam.sample(4, seed=0)
    sol = do.solve(fam, do.LBFGS(memory=3), x, max_steps=5, throw=False)
    st = sol.state
    m = 3
    sr = (st.pairs[:, :m] * st.pairs[:, m:]).sum(-1)
    torch.testing.assert_close(sr, st.valid, atol=1e-12, rtol=0)  # s_i' r_i = 1 stored, 0 for empty slots
    assert (st.valid.sum(-1) == 3).all()


def test_line_search_retry_falls_back_for_problems_with_plain_batched_attributes():
    """A custom problem keeping per-instance data as a plain attribute (not a buffer) cannot be evaluated on
    a sub-batch; the line search must notice and use the full batch, giving the same result as alone."""
    import doubleopt as do

    class Held(do.Problem):
        dim = 2

        def __init__(self, centers):
            super().__init__()
            self.centers = centers  # (B, 2), a plain attribute

        def objective(self, y, x):
            return 100.0 * ((y - self.centers) ** 4).sum(-1) + ((y - self.centers) ** 2).sum(-1)

    centers = torch.tensor([[1.0, 2.0], [30.0, -40.0], [0.5, 0.5]], dtype=torch.float64)
    sol = do.solve(Held(centers), do.GD(lr=1.0, line_search=True), None, torch.zeros(3, 2, dtype=torch.float64),
                   max_steps=5000, tol=1e-6)
    torch.testing.assert_close(sol.y, centers, atol=1e-2, rtol=0)


# ---- the incrementally updated compact representation ------------------------------------------------------


def _random_pairs(B=5, m=6, n=9, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = M @ M.T + 0.1 * torch.eye(n, dtype=torch.float64)
    scales = torch.logspace(0, -spread, m, dtype=torch.float64)[:, None]
    s = torch.randn(B, m, n, generator=g, dtype=torch.float64) * scales
    r = s @ A + 1e-3 * torch.randn(B, m, n, generator=g, dtype=torch.float64) * scales
    rho = 1.0 / (s * r).sum(-1)
    gamma = torch.rand(B, generator=g, dtype=torch.float64) + 0.5
    grad = torch.randn(B, n, generator=g, dtype=torch.float64)
    return s, r, rho, gamma, grad


def test_compact_product_equals_two_loop_with_empty_and_skipped_slots():
    from doubleopt.solvers.lbfgs import compact_inverse_hessian_product, two_loop

    for seed, spread in [(0, 0.0), (1, 3.0), (2, 6.0)]:
        s, r, rho, gamma, grad = _random_pairs(seed=seed, spread=spread)
        rho[0, :3] = 0.0  # empty slots (a young memory)
        rho[1, 2] = 0.0  # a skipped pair in the middle
        rho[2, -1] = 0.0  # the newest pair skipped
        rho[3] = 0.0  # nothing stored: H = gamma I
        a, b = two_loop(grad, s, r, rho, gamma), compact_inverse_hessian_product(grad, s, r, rho, gamma)
        torch.testing.assert_close(b, a, atol=1e-12 * float(a.abs().max()), rtol=1e-12)
        torch.testing.assert_close(b[3], gamma[3] * grad[3], atol=0, rtol=1e-15)


def test_compact_product_after_the_memory_wraps_around():
    """Pushing more pairs than the memory holds keeps the newest m (the ring drops the oldest)."""
    from doubleopt.solvers.lbfgs import _empty_memory, _product, _push_pair, two_loop

    m, total = 4, 9
    s, r, rho, gamma, grad = _random_pairs(m=total, seed=3, spread=2.0)
    rho[1, 6] = 0.0  # skipped while inside the final window
    rho[2, 2] = 0.0  # skipped, then dropped
    pairs, valid, rinv, yy, sy = _empty_memory(grad, m)
    for i in range(total):
        ok = rho[:, i] > 0
        c = torch.where(ok, rho[:, i], torch.zeros_like(rho[:, i])).sqrt()[:, None]
        pairs, valid, rinv, yy, sy, pg = _push_pair(pairs, valid, rinv, yy, sy, s[:, i] * c, r[:, i] * c, ok, grad)
    want = two_loop(grad, s[:, -m:], r[:, -m:], rho[:, -m:], gamma)
    got = _product(grad, pairs, pg, rinv, yy, sy, gamma)
    torch.testing.assert_close(got, want, atol=1e-12 * float(want.abs().max()), rtol=1e-12)
    torch.testing.assert_close(valid, (rho[:, -m:] > 0).to(valid.dtype), atol=0, rtol=0)
    # the maintained small matrices equal the ones computed from the stored pairs
    S, Y = pairs[:, :m], pairs[:, m:]
    SY = S @ Y.transpose(-1, -2)
    R = SY.triu() + torch.diag_embed(1 - valid)
    torch.testing.assert_close(rinv, torch.linalg.inv(R), atol=1e-12, rtol=0)
    torch.testing.assert_close(yy, Y @ Y.transpose(-1, -2), atol=1e-12, rtol=0)
    torch.testing.assert_close(sy, torch.diagonal(SY, dim1=-2, dim2=-1), atol=1e-12, rtol=0)
    torch.testing.assert_close(pg, (pairs @ grad[..., None])[..., 0], atol=1e-12, rtol=0)


def test_lbfgs_batched_equals_per_instance_solves():
    fam = do.problems.LogisticRegression(n_features=5, n_points=60, dtype=torch.float64)
    x = fam.sample(6, seed=4)
    for memory in (1, 3, 10):  # a fixed number of steps (wrapping the memory of 1 and 3), no stopping test
        sol = do.solve(fam, do.LBFGS(memory=memory), x, tol=0.0, max_steps=8, throw=False)
        for i in range(6):
            idx = torch.tensor([i])
            one = do.solve(fam, do.LBFGS(memory=memory), tree_index(x, idx), tol=0.0, max_steps=8, throw=False)
            torch.testing.assert_close(one.y[0], sol.y[i], atol=1e-12, rtol=0)
            torch.testing.assert_close(one.state.rinv[0], sol.state.rinv[i], atol=1e-9, rtol=1e-9)


def test_lbfgs_skips_pairs_without_curvature():
    """A concave stretch (s'r < 0) must not enter the memory; the solve still converges."""

    class DoubleWell(do.Problem):
        def objective(self, y, x):
            return ((y * y - 1) ** 2).sum(-1) + 0.1 * y.sum(-1)

    y0 = torch.tensor([[0.05, -0.05, 2.0], [1.5, -1.5, 0.3]], dtype=torch.float64)
    from doubleopt.solvers.lbfgs import LBFGS

    solver = LBFGS(memory=4)
    prob = DoubleWell()
    state = solver.init(prob, y0, None)
    y, skipped = y0, 0
    for _ in range(30):
        y, state = solver.step(prob, y, None, state)
        skipped += int((state.valid[:, -1] == 0).sum())
        sr = (state.pairs[:, :4] * state.pairs[:, 4:]).sum(-1)
        torch.testing.assert_close(sr, state.valid, atol=1e-10, rtol=0)
    assert skipped > 0
    sol = do.solve(prob, LBFGS(memory=4), None, y0, tol=1e-8)
    assert bool(sol.successful.all())


def test_unit_step_line_search_equals_tensor_step():
    fam, x, y, value, grad, d, _ = _line_search_case()
    d = 0.05 * d  # a unit step accepted everywhere
    a = armijo_backtracking(fam, x, y, value, grad, d, 1.0)
    b = armijo_backtracking(fam, x, y, value, grad, d, torch.ones_like(value))
    for f in ("y", "value", "grad", "step", "status"):
        torch.testing.assert_close(getattr(a, f), getattr(b, f), atol=0, rtol=0)
    d = -grad * 40.0  # some instances must backtrack from the unit step
    a = armijo_backtracking(fam, x, y, value, grad, d, 1.0)
    b = armijo_backtracking(fam, x, y, value, grad, d, torch.ones_like(value))
    assert (a.step < 1).any()
    for f in ("y", "value", "grad", "step", "status"):
        torch.testing.assert_close(getattr(a, f), getattr(b, f), atol=0, rtol=0)


def test_lbfgs_unroll_gradient_matches_finite_differences():
    fam = do.problems.LogisticRegression(n_features=2, n_points=20, dtype=torch.float64)
    x = fam.sample(3, seed=5)
    feats = x.features.clone().requires_grad_(True)

    def out(f):
        xx = do.problems.RegressionContext(f, x.targets)
        return do.solve(fam, do.LBFGS(memory=3), xx, adjoint=do.Unroll(), max_steps=6, tol=0.0, throw=False).y

    w = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (g,) = torch.autograd.grad((out(feats) * w).sum(), feats)
    v = torch.randn(feats.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        fd = ((out(feats + eps * v) - out(feats - eps * v)) * w).sum() / (2 * eps)
    torch.testing.assert_close((g * v).sum(), fd, atol=1e-6, rtol=1e-5)


def test_logistic_fast_value_and_grad_match_autograd_and_bce():
    import torch.nn.functional as F

    fam = do.problems.LogisticRegression(n_features=4, n_points=50, dtype=torch.float64)
    x = fam.sample(5, seed=6)
    for y in (torch.zeros(5, 5, dtype=torch.float64), 30 * torch.randn(5, 5, dtype=torch.float64)):
        with torch.no_grad():
            v, g = fam.value_and_grad(y, x)
        yv = y.clone().requires_grad_(True)
        z = (x.features @ yv[:, :-1, None])[..., 0] + yv[:, -1:]
        ref = F.binary_cross_entropy_with_logits(z, x.targets, reduction="none").mean(-1) + 0.5 * fam.l2 * (
            yv * yv
        ).sum(-1)
        (gr,) = torch.autograd.grad(ref.sum(), yv)
        torch.testing.assert_close(v, ref.detach(), atol=1e-13, rtol=1e-13)
        torch.testing.assert_close(g, gr, atol=1e-14, rtol=1e-12)
        # with a graph (y requires grad) the value and its autograd gradient are exact at z = 0 too
        yv = y.clone().requires_grad_(True)
        (ga,) = torch.autograd.grad(fam.objective(yv, x).sum(), yv)
        torch.testing.assert_close(ga, gr, atol=1e-14, rtol=1e-12)
