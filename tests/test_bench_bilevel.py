"""Smoke run of `doubleopt bench bilevel -- --quick`: every study end to end, with checks of what it measured."""

import importlib.util
import json

import pytest

from doubleopt.bench import run_study


@pytest.mark.slow
def test_bilevel_bench_quick(tmp_path):
    results = run_study("bilevel", ["--quick", "--threads", "1", "--out", str(tmp_path)])
    assert set(results) == {"error", "memory", "outer", "torchopt"}
    for study in results:
        assert (tmp_path / study / "results.json").is_file() and (tmp_path / study / "table.md").is_file()
        assert (tmp_path / study / f"bilevel_{study}.png").stat().st_size > 0

    # error vs compute: tight CG is close to the reference, Neumann's error falls with k, exact rows agree
    err = {(r["problem"], r["method"]): r for r in results["error"]}
    for problem in ("digits", "sparse"):
        assert err[(problem, "Implicit-CG rtol=1e-06")]["rel_error"] < 1e-4
        neumann = [err[(problem, f"Neumann k={k}")]["rel_error"] for k in (0, 5, 20)]
        assert neumann[0] > neumann[1] > neumann[2]
        assert err[(problem, "Neumann k=20")]["hvps"] == 20
    data = json.loads((tmp_path / "error" / "results.json").read_text())
    assert data["problems"]["digits"]["L_power_iteration"] > 0
    assert {r["layout"] for r in data["hvp_layout_timing"]} >= {"csr, stored transpose", "dense (bmm)"}

    # memory: unrolled memory grows with the inner steps, implicit memory does not
    mem = {(r["method"].split()[0], r["inner_steps"]): r["peak_increase_mib"] for r in results["memory"]}
    assert mem[("Unroll", 40)] > mem[("Unroll", 5)] + 1.0
    assert mem[("Implicit-CG", 40)] < mem[("Unroll", 40)]

    # outer: every method ran its steps, the search baselines are there, the goal is reported
    methods = {r["method"] for r in results["outer"]}
    assert {"Implicit-CG", "Unroll", "grid search", "random search"} <= methods
    outer = json.loads((tmp_path / "outer" / "results.json").read_text())
    assert set(outer["goal_64_below_best_grid"]) == {"bilevel_64_val_loss", "best_grid_val_loss", "met"}

    # torchopt (a bench-only dependency): the same hypergradient as ours
    if importlib.util.find_spec("torchopt") is not None:
        rows = results["torchopt"]
        assert len(rows) == 2 and all(r["rel_error"] < 1e-6 for r in rows)
