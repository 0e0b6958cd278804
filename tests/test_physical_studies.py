"""Smoke runs of the physical studies and CLI (seconds, --quick), and the task builders."""

from __future__ import annotations

import json

import numpy as np
import pytest

import doubleopt.physical as ph
from doubleopt.bench import run_study
from doubleopt.cli import main as cli_main


def test_bench_physical_quick(tmp_path):
    report = run_study("physical", ["--quick", "--out", str(tmp_path)])
    methods = list(dict.fromkeys(r["method"] for r in report.rows))
    assert [r["nodes"] for r in report.rows] == [300] * len(methods) + [1000] * len(methods)
    assert any(m.startswith("baseline: plain step, factorize once per step") for m in methods)
    assert "naive (spsolve per example)" in methods
    assert all(r["max_rel_diff"] < 1e-9 for r in report.rows)  # every row: the same update as the spsolve loop
    for r in report.rows:  # the ratio is against the factorize-once baseline
        if r["method"].startswith("baseline"):
            assert r["speedup_vs_baseline"] == 1.0
    assert (tmp_path / "physical.png").exists()
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["conditions"]["torch_threads"] >= 1


def test_bench_physical_hessian_quick(tmp_path):
    report = run_study("physical_hessian", ["--quick", "--out", str(tmp_path)])
    row = report.rows[0]
    assert row["cost_trained"] < row["cost_init"]
    assert -1 <= row["rho_trained"] <= 1
    assert "verdict" in json.loads((tmp_path / "results.json").read_text())


def test_bench_physical_tasks_quick(tmp_path):
    report = run_study("physical_tasks", ["--quick", "--out", str(tmp_path)])
    curves = [r for r in report.rows if r["study"] == "curves"]
    assert {(r["task"], r["rule"]) for r in curves} == {
        (t, r) for t in ("allosteric", "regression", "iris") for r in ("coupled", "ep", "exact")
    }
    assert all(r["test_cost_final"] < r["cost_init"] for r in curves)
    assert (tmp_path / "physical_tasks.png").exists()


def test_cli_physical_train_writes_safetensors(tmp_path):
    from safetensors.numpy import load_file

    assert (
        cli_main(
            [
                "physical-train",
                "--task",
                "regression",
                "--nodes",
                "40",
                "--steps",
                "20",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    d = load_file(str(tmp_path / "conductances.safetensors"))
    assert d["k"].shape == (d["edges"].shape[0],) and np.all(d["k"] > 0)
    assert (tmp_path / "learning_curve.png").exists()


def test_tasks_are_realizable_shaped_and_seeded():
    task = ph.iris_task(60)
    assert task.x_train.shape == (112, 9) and task.t_train.shape == (112, 3) and task.x_test.shape == (38, 9)
    assert task.x_train.min() >= 0 and task.x_train.max() <= 1
    reg = ph.regression_task(60, n_train=10, n_test=5, seed=3)
    assert reg.t_train.min() >= 0 and reg.t_train.max() <= 0.8 + 1e-12  # inside the convex hull of the inputs
    np.testing.assert_array_equal(reg.x_train, ph.regression_task(60, n_train=10, n_test=5, seed=3).x_train)
    allo = ph.allosteric_task(60, n_targets=2)
    assert allo.network.n_outputs == 2 and allo.x_train.shape == (1, 1)
    with pytest.raises(ValueError, match="output_kind"):
        ph.random_network(30, output_kind="faces")


def test_bench_physical_scale_quick(tmp_path):
    """The scaling study's smoke run: every row gives the baseline's update, ratios are against the baseline and the
    previous SuperLU step, and the learning run lowers the cost."""
    report = run_study("physical_scale", ["--sizes", "500", "2000", "--repeats", "1", "--learn-nodes", "3000",
                                          "--learn-steps", "5", "--learn-lr", "10", "--out", str(tmp_path)])
    methods = list(dict.fromkeys(r["method"] for r in report.rows))
    assert "doubleopt, qdldl" in methods and "doubleopt, splu" in methods
    assert any(m.startswith("baseline: plain step, 2 splu") for m in methods)
    assert {(r["nodes"], r["batch"]) for r in report.rows} == {(n, b) for n in (500, 2000) for b in (1, 32)}
    assert all(r["max_rel_diff"] < 1e-9 for r in report.rows)
    for r in report.rows:
        if r["method"].startswith("baseline"):
            assert r["speedup_vs_baseline"] == 1.0
        if r["method"].startswith("doubleopt before"):
            assert r["speedup_vs_before"] == 1.0 and r["backend"] == "splu-reference"
    data = json.loads((tmp_path / "results.json").read_text())
    learn = data["learning"]
    assert learn["cost"][-1] < learn["cost"][0] and len(learn["wall_s"]) == len(learn["cost"]) == 6
    assert (tmp_path / "physical_scale.png").exists()
