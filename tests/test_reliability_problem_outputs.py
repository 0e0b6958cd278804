"""A user-written Problem that returns the wrong type, shape or dtype is refused at the first call of do.solve with
a message that says what was expected (issue 18)."""

import re

import pytest
import torch

import doubleopt as do

BAD_OBJECTIVES = {
    "scalar": (lambda y, x: ((y - x) ** 2).sum(), r"shape \(\).*expected one value per instance.*\(4,\)"),
    "keepdim": (lambda y, x: ((y - x) ** 2).sum(-1, keepdim=True), r"shape \(4, 1\).*\.sum\(-1\)"),
    "unreduced": (lambda y, x: (y - x) ** 2, r"shape \(4, 3\).*\.sum\(-1\)"),
    "float32": (lambda y, x: ((y - x) ** 2).sum(-1).float(), r"dtype torch\.float32.*dtype torch\.float64"),
    "int": (lambda y, x: ((y - x) ** 2).sum(-1).long(), r"dtype torch\.int64"),
    "one_row": (lambda y, x: ((y - x) ** 2).sum(-1)[:1], r"shape \(1,\)"),
    "list": (lambda y, x: ((y - x) ** 2).sum(-1).tolist(), r"returned a list"),
}


def _problem(objective):
    return type("UserProblem", (do.Problem,), {"dim": 3, "objective": lambda self, y, x: objective(y, x)})()


@pytest.mark.parametrize("solver", [do.LBFGS(), do.GD(lr=0.1), do.Adam(), do.Newton(), do.NonlinearCG()],
                         ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("case", sorted(BAD_OBJECTIVES))
def test_wrong_objective_output(case, solver):
    objective, pattern = BAD_OBJECTIVES[case]
    x = torch.ones(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"UserProblem\.objective\(y, x\) returned") as info:
        do.solve(_problem(objective), solver, x, max_steps=5, throw=False)
    assert re.search(pattern, str(info.value)), str(info.value)


class AnalyticGradient(do.Problem):
    dim = 3

    def __init__(self, grad_fn):
        super().__init__()
        self.grad_fn = grad_fn

    def objective(self, y, x):
        return ((y - x) ** 2).sum(-1)

    def smooth_value_and_grad(self, y, x):
        return self.grad_fn(self, y, x)


@pytest.mark.parametrize(
    ("grad_fn", "pattern"),
    [
        (lambda p, y, x: (p.objective(y, x), 2 * (y - x)[:, :2]), r"gradient that is a tensor of shape \(4, 2\)"),
        (lambda p, y, x: (p.objective(y, x), (2 * (y - x)).float()), r"gradient .*dtype torch\.float32"),
        (lambda p, y, x: (p.objective(y, x)[:, None], 2 * (y - x)), r"value that is a tensor of shape \(4, 1\)"),
        (lambda p, y, x: 2 * (y - x), r"expected a pair \(value, grad\)"),
    ],
)
def test_wrong_smooth_value_and_grad(grad_fn, pattern):
    x = torch.ones(4, 3, dtype=torch.float64)
    for solver in (do.LBFGS(), do.GD(lr=0.1)):
        with pytest.raises(ValueError, match=pattern):
            do.solve(AnalyticGradient(grad_fn), solver, x, max_steps=5, throw=False)


def test_composite_nonsmooth_shape():
    class BadL1(do.Problem):
        dim = 3
        is_composite = True

        def smooth(self, y, x):
            return ((y - x) ** 2).sum(-1)

        def nonsmooth(self, y, x):
            return y.abs()  # not reduced

        def prox(self, y, x, step):
            return y

    with pytest.raises(ValueError, match=r"BadL1\.nonsmooth\(y, x\) returned a tensor of shape \(4, 3\)"):
        do.solve(BadL1(), do.ISTA(), torch.ones(4, 3, dtype=torch.float64), max_steps=5, throw=False)


def test_a_problem_that_raises_keeps_its_own_error():
    class Raises(do.Problem):
        dim = 3

        def objective(self, y, x):
            raise KeyError("my own bug")

    with pytest.raises(KeyError, match="my own bug"):
        do.solve(Raises(), do.LBFGS(), torch.ones(2, 3), max_steps=5)


def test_correct_problem_is_evaluated_as_before():
    class Sphere(do.Problem):
        dim = 3

        def objective(self, y, x):
            return ((y - x) ** 2).sum(-1)

    sol = do.solve(Sphere(), do.GD(lr=0.25), torch.ones(4, 3), max_steps=3, tol=0.0, throw=False)
    assert sol.stats["f_evals"] == 1 + 3  # init + one per step: no extra probing call
