"""The contract of ``solve``: validation, per-instance termination and result codes, statistics."""

import pytest
import torch

import doubleopt as do
from doubleopt._tree import tree_index


@pytest.fixture
def logistic():
    fam = do.problems.LogisticRegression(n_features=3, n_points=30, dtype=torch.float64)
    return fam, fam.sample(5, seed=0)


def test_public_api_example_from_the_issue():
    family = do.problems.LogisticRegression(n_features=3, n_points=100)
    x = family.sample(256, generator=torch.Generator().manual_seed(0))
    sol = do.solve(family, do.LBFGS(), x, max_steps=200, tol=1e-6, adjoint=do.Implicit(), throw=False)
    assert sol.y.shape == (256, 4) and sol.value.shape == (256,)
    assert sol.result.shape == (256,) and sol.num_steps.shape == (256,)
    assert (sol.result == do.RESULTS.successful).all()
    assert (sol.stationarity <= 1e-6).all()
    assert {"f_evals", "grad_evals", "wall_time"} <= set(sol.stats)
    assert do.RESULTS.max_steps_reached.message and do.RESULTS.nonfinite.message


def test_same_seed_same_batch_and_result():
    fam = do.problems.MLPClassifier(hidden=(5,), dataset="digits", n_points=16)
    a, b = fam.sample(3, seed=5), fam.sample(3, seed=5)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, fam.sample(3, seed=6).inputs)
    s1 = do.solve(fam, do.Adam(lr=0.01), a, max_steps=20, throw=False)
    s2 = do.solve(fam, do.Adam(lr=0.01), b, max_steps=20, throw=False)
    assert torch.equal(s1.y, s2.y)


@pytest.mark.parametrize("solver", [do.LBFGS(), do.Adam(lr=0.1), do.NonlinearCG(), do.GD(lr=0.5, line_search=True)])
def test_batch_equals_individual_solves(logistic, solver):
    """Per-instance termination: a finished instance stops changing while others continue, so every
    instance ends exactly where it would have ended alone."""
    fam, x = logistic
    batch = do.solve(fam, solver, x, max_steps=3000, tol=1e-7, throw=False)
    assert len(set(batch.num_steps.tolist())) > 1  # instances really stop at different steps
    for i in range(5):
        single = do.solve(fam, solver, tree_index(x, torch.tensor([i])), max_steps=3000, tol=1e-7, throw=False)
        assert int(single.num_steps[0]) == int(batch.num_steps[i])
        torch.testing.assert_close(single.y[0], batch.y[i], atol=1e-10, rtol=0)


def test_max_steps_reached_and_throw_message(logistic):
    fam, x = logistic
    sol = do.solve(fam, do.GD(lr=1e-3), x, max_steps=3, throw=False)
    assert (sol.result == do.RESULTS.max_steps_reached).all() and (sol.num_steps == 3).all()
    with pytest.raises(do.SolveError) as err:
        do.solve(fam, do.GD(lr=1e-3), x, max_steps=3)
    assert "max_steps_reached" in str(err.value) and "indices 0, 1, 2, 3, 4" in str(err.value)
    assert err.value.failed == [0, 1, 2, 3, 4]
    assert err.value.solution.y.shape == (5, 4)


def test_nonfinite_iterates_flagged_per_instance_only():
    fam = do.problems.Quadratic(dim=4, condition_number=10.0, dtype=torch.float64)
    x = fam.sample(4, seed=1)
    x.A[2] *= 1e3  # instance 2 diverges under this step size and overflows to inf
    sol = do.solve(fam, do.GD(lr=0.15), x, max_steps=5000, tol=1e-8, throw=False)
    assert int(sol.result[2]) == do.RESULTS.nonfinite
    assert torch.isfinite(sol.y[2]).all()  # the last finite iterate is returned
    others = torch.tensor([0, 1, 3])
    assert (sol.result[others] == do.RESULTS.successful).all()
    torch.testing.assert_close(sol.y[others], fam.solution(x)[others], atol=1e-7, rtol=0)
    with pytest.raises(do.SolveError, match="nonfinite.*indices 2"):
        do.solve(fam, do.GD(lr=0.15), x, max_steps=5000, tol=1e-8)


def test_nonfinite_inputs(logistic):
    fam, x = logistic
    x.features[3, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values .* instances \[3\]"):
        do.solve(fam, do.LBFGS(), x)
    sol = do.solve(fam, do.LBFGS(), x, throw=False)
    assert int(sol.result[3]) == do.RESULTS.nonfinite and torch.isnan(sol.value[3])
    assert (sol.result[[0, 1, 2, 4]] == do.RESULTS.successful).all()
    y0 = torch.zeros(5, 4, dtype=torch.float64)
    y0[1, 2] = float("inf")
    x.features[3, 0, 0] = 0.0
    sol = do.solve(fam, do.LBFGS(), x, y0, throw=False)
    assert sol.result.tolist() == [0, int(do.RESULTS.nonfinite), 0, 0, 0]


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"max_steps": 0}, ValueError, "max_steps must be an integer >= 1"),
        ({"max_steps": 2.5}, ValueError, "max_steps"),
        ({"tol": -1.0}, ValueError, "tol must be >= 0"),
        ({"rtol": -0.1}, ValueError, "rtol must be >= 0"),
        ({"adjoint": "implicit"}, TypeError, "adjoint must be"),
    ],
)
def test_bad_options(logistic, kwargs, exc, match):
    fam, x = logistic
    with pytest.raises(exc, match=match):
        do.solve(fam, do.LBFGS(), x, **kwargs)


def test_unknown_option_is_an_error(logistic):
    fam, x = logistic
    with pytest.raises(TypeError, match="unexpected keyword"):
        do.solve(fam, do.LBFGS(), x, maxiter=10)
    with pytest.raises(TypeError, match="unexpected keyword"):
        do.LBFGS(history=5)


@pytest.mark.parametrize(
    "bad",
    [
        lambda: do.GD(lr=-1.0),
        lambda: do.Adam(lr=0.0),
        lambda: do.Adam(betas=(1.0, 0.9)),
        lambda: do.Momentum(momentum=1.5),
        lambda: do.LBFGS(memory=0),
        lambda: do.RMSProp(alpha=1.0),
    ],
)
def test_bad_solver_configuration(bad):
    with pytest.raises(ValueError):
        bad()


def test_shape_dtype_device_mismatches(logistic):
    fam, x = logistic
    with pytest.raises(ValueError, match="y0 has 3 columns but LogisticRegression has dimension n = 4"):
        do.solve(fam, do.LBFGS(), x, torch.zeros(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch size 4 but x has batch size 5"):
        do.solve(fam, do.LBFGS(), x, torch.zeros(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype mismatch"):
        do.solve(fam, do.LBFGS(), x, torch.zeros(5, 4, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"shape \(B, n\)"):
        do.solve(fam, do.LBFGS(), x, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point"):
        do.solve(fam, do.LBFGS(), x, torch.zeros(5, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"features of shape \(B, N, 3\)"):
        do.solve(fam, do.LBFGS(), do.problems.RegressionContext(x.features[..., :2], x.targets))
    with pytest.raises(ValueError, match="expects a RegressionContext"):
        do.solve(fam, do.LBFGS(), x.features)
    with pytest.raises(ValueError, match=r"targets must have shape \(5, 30\), got \(4, 30\)"):
        do.solve(fam, do.LBFGS(), do.problems.RegressionContext(x.features, x.targets[:4]))
    with pytest.raises(ValueError, match="disagree on the batch size"):
        do.batch_size((x.features, x.targets[:4]))
    if torch.device("meta") is not None:
        with pytest.raises(ValueError, match="device mismatch"):
            do.solve(fam, do.LBFGS(), x, torch.zeros(5, 4, dtype=torch.float64, device="meta"))


def test_wrong_problem_or_solver_types(logistic):
    fam, x = logistic
    with pytest.raises(TypeError, match="problem must be a doubleopt.Problem"):
        do.solve(lambda y, x: y.sum(-1), do.LBFGS(), x)
    with pytest.raises(TypeError, match="solver must be"):
        do.solve(fam, torch.optim.Adam, x)
    with pytest.raises(ValueError, match="composite"):
        do.solve(do.problems.Lasso(10, 20), do.LBFGS(), do.problems.Lasso(10, 20).sample(2))


@pytest.mark.parametrize("B", [0, 1])
def test_batch_of_zero_or_one(B):
    fam = do.problems.Quadratic(dim=3, dtype=torch.float64)
    x = fam.sample(B, seed=0)
    sol = do.solve(fam, do.LBFGS(), x, tol=1e-10)
    assert sol.y.shape == (B, 3) and sol.result.shape == (B,) and sol.value.shape == (B,)
    if B:
        torch.testing.assert_close(sol.y, fam.solution(x), atol=1e-8, rtol=0)


def test_trace_and_stats(logistic):
    fam, x = logistic
    sol = do.solve(fam, do.LBFGS(), x, tol=1e-8, trace=True)
    T = int(sol.num_steps.max())
    assert sol.trace.shape == (T + 1, 5)
    assert sol.trace_times.shape == (T + 1,) and (sol.trace_times.diff() >= 0).all()
    torch.testing.assert_close(sol.trace[-1], sol.value)
    assert (sol.trace[1:] <= sol.trace[:-1] + 1e-12).all()  # monotone under a line search
    assert sol.stats["grad_evals"] >= T and sol.stats["wall_time"] > 0
    assert "successful" in sol.summary()


def test_relative_progress_tolerance(logistic):
    fam, x = logistic
    sol = do.solve(fam, do.GD(lr=0.01), x, max_steps=100000, tol=0.0, rtol=1e-6)
    assert (sol.num_steps < 100000).all() and sol.successful.all()


def test_progress_bar_runs(logistic, capsys):
    fam, x = logistic
    sol = do.solve(fam, do.LBFGS(), x, progress=True)
    assert sol.successful.all()


def test_context_free_problem_needs_y0():
    class Sphere(do.Problem):
        dim = 2

        def objective(self, y, x):
            return (y**2).sum(-1)

    with pytest.raises(ValueError, match="y0 is required"):
        do.solve(Sphere(), do.LBFGS(), None)
    sol = do.solve(Sphere(), do.LBFGS(), None, torch.ones(3, 2))
    assert sol.successful.all() and sol.y.abs().max() < 1e-5
