"""The test grid's two registries: a problem zoo and a solver registry (DESIGN principle 9)."""

from __future__ import annotations

import torch

import doubleopt as do

# name -> factory(dtype) returning a problem family. Sizes are small: tests check correctness, not speed.
ZOO = {
    "quadratic": lambda dt: do.problems.Quadratic(dim=6, condition_number=20.0, dtype=dt),
    "rosenbrock": lambda dt: do.problems.Rosenbrock(dim=4, dtype=dt),
    "logistic": lambda dt: do.problems.LogisticRegression(n_features=4, n_points=40, dtype=dt),
    "logistic_breast_cancer": lambda dt: do.problems.LogisticRegression(
        n_features=30, n_points=60, l2=0.1, dataset="breast_cancer", dtype=dt
    ),
    "ridge": lambda dt: do.problems.RidgeRegression(n_features=4, n_points=30, dtype=dt),
    "robust": lambda dt: do.problems.RobustRegression(n_features=3, n_points=40, dtype=dt),
    "mlp_synthetic": lambda dt: do.problems.MLPClassifier(
        hidden=(6,), dataset="synthetic", n_inputs=4, n_classes=3, n_points=32, dtype=dt
    ),
    "mlp_digits": lambda dt: do.problems.MLPClassifier(hidden=(4,), dataset="digits", n_points=32, dtype=dt),
    "lasso": lambda dt: do.problems.Lasso(n_measurements=12, n_atoms=24, lam=0.05, dtype=dt),
}

SMOOTH_SOLVERS = {
    "gd": lambda: do.GD(lr=0.05),
    "gd_armijo": lambda: do.GD(lr=1.0, line_search=True),
    "momentum": lambda: do.Momentum(lr=0.02, momentum=0.9),
    "nesterov": lambda: do.Nesterov(lr=0.02, momentum=0.9),
    "adagrad": lambda: do.Adagrad(lr=0.1),
    "rmsprop": lambda: do.RMSProp(lr=0.01),
    "adam": lambda: do.Adam(lr=0.02),
    "ncg": lambda: do.NonlinearCG(),
    "lbfgs": lambda: do.LBFGS(),
    "newton": lambda: do.Newton(),
}
PROXIMAL_SOLVERS = {"ista": lambda: do.ISTA(), "fista": lambda: do.FISTA()}
SOLVERS = {**SMOOTH_SOLVERS, **PROXIMAL_SOLVERS}
# solvers with a sufficient-decrease line search never increase the objective
MONOTONE = {"gd_armijo", "lbfgs", "ncg", "newton", "ista"}


def compatible(problem: do.Problem, solver_name: str) -> bool:
    if problem.is_composite:
        return solver_name in PROXIMAL_SOLVERS
    return True


def sample(family, batch, dtype=torch.float64, seed=0):
    return family.sample(batch, generator=torch.Generator().manual_seed(seed))


def train_lopt_full_and_resumed(argv: list[str], tmp_path, stop_at: int, between=None):
    """``doubleopt train-lopt ARGV`` run to the end in ``tmp_path/full``, and again in ``tmp_path/cut``: stopped by
    an exception from the progress callback at meta-step ``stop_at``, then ``--resume`` d. ``between(cut_dir)``
    runs after the interruption. Returns the two output folders (compare their weights)."""
    import pytest

    from doubleopt.cli import build_parser
    from doubleopt.learned._cli import run

    class Interrupt(Exception):
        pass

    def stop(trainer, info):
        if trainer.meta_step == stop_at:
            raise Interrupt

    full, cut = tmp_path / "full", tmp_path / "cut"
    run(build_parser().parse_args(["train-lopt", *argv, "--out", str(full)]))
    with pytest.raises(Interrupt):
        run(build_parser().parse_args(["train-lopt", *argv, "--out", str(cut)]), callback=stop)
    if between is not None:
        between(cut)
    run(build_parser().parse_args(["train-lopt", *argv, "--out", str(cut), "--resume"]))
    return full, cut
