"""The grid of the two registries (problem zoo x solver registry) and a hypothesis fuzz test of solve."""

import pytest
import torch
from helpers import MONOTONE, SOLVERS, ZOO, compatible
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import doubleopt as do

VALID_CODES = {int(c) for c in do.RESULTS}
PAIRS = [(p, s) for p in ZOO for s in SOLVERS]


def _check_solution(sol, B, n, tol):
    assert sol.y.shape == (B, n) and sol.result.shape == (B,) and sol.num_steps.shape == (B,)
    assert set(sol.result.tolist()) <= VALID_CODES
    ok = sol.successful
    # a success is never a NaN and always meets the tolerance
    assert torch.isfinite(sol.y[ok]).all() and torch.isfinite(sol.value[ok]).all()
    assert (sol.stationarity[ok] <= tol).all()
    # whatever the code, the returned iterate is finite for finite inputs (last finite iterate)
    assert torch.isfinite(sol.y).all()


@pytest.mark.parametrize("problem_name,solver_name", PAIRS, ids=[f"{p}-{s}" for p, s in PAIRS])
def test_zoo_x_solvers(problem_name, solver_name):
    fam = ZOO[problem_name](torch.float64)
    solver = SOLVERS[solver_name]()
    x = fam.sample(3, seed=0)
    if not compatible(fam, solver_name):
        with pytest.raises(ValueError, match="composite"):
            do.solve(fam, solver, x, max_steps=5)
        return
    sol = do.solve(fam, solver, x, max_steps=30, tol=1e-6, throw=False)
    _check_solution(sol, 3, fam.dim, 1e-6)
    if solver_name in MONOTONE:
        y0 = fam.init(x)
        assert (sol.value <= fam.objective(y0, x) + 1e-9).all(), "a line-search solver made the objective worse"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    problem_name=st.sampled_from(sorted(ZOO)),
    solver_name=st.sampled_from(sorted(SOLVERS)),
    B=st.integers(0, 4),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    max_steps=st.integers(1, 25),
    scale=st.sampled_from([1.0, 1e3, 1e8]),
    poison=st.booleans(),
)
def test_fuzz_solve(problem_name, solver_name, B, seed, dtype, max_steps, scale, poison):
    """Any (problem, solver, batch, dtype, start scale, poisoned instance) either gives valid per-instance
    codes or a clear error; a NaN never comes back as a success."""
    fam = ZOO[problem_name](dtype)
    solver = SOLVERS[solver_name]()
    x = fam.sample(B, seed=seed)
    g = torch.Generator().manual_seed(seed)
    y0 = fam.init(x) + scale * torch.randn(B, fam.dim, generator=g, dtype=torch.float64).to(dtype)
    if poison and B > 0:
        y0[B - 1, 0] = float("nan")
    if not compatible(fam, solver_name):
        with pytest.raises(ValueError, match="composite"):
            do.solve(fam, solver, x, y0, max_steps=max_steps, throw=False)
        return
    tol = do.default_tol(dtype)
    sol = do.solve(fam, solver, x, y0, max_steps=max_steps, throw=False)
    assert sol.y.shape == (B, fam.dim) and set(sol.result.tolist()) <= VALID_CODES
    ok = sol.successful
    assert torch.isfinite(sol.y[ok]).all() and torch.isfinite(sol.value[ok]).all()
    assert (sol.stationarity[ok] <= tol).all()
    assert (sol.num_steps <= max_steps).all()
    if poison and B > 0:
        assert int(sol.result[B - 1]) == do.RESULTS.nonfinite
        with pytest.raises(ValueError, match="non-finite"):
            do.solve(fam, solver, x, y0, max_steps=max_steps, throw=True)
