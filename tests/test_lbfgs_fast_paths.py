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
