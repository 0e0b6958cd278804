"""Smoke runs of `doubleopt bench actor_critic -- --study NAME --quick` (each study end to end, seconds)."""

import importlib.util
import json
import math

import pytest

from doubleopt.bench import run_study


@pytest.mark.parametrize("study", ["timescales", "argmax", "config"])
def test_actor_critic_studies_quick(tmp_path, study):
    report = run_study("actor_critic", ["--study", study, "--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / study / "results.json").read_text())
    assert data["conditions"]["torch_threads"] == 1 and report.rows
    assert (tmp_path / study / f"actor_critic_{study}.png").stat().st_size > 1000
    if study == "timescales":
        # 4 ratios x 3 delays x 2 seeds, and a too-fast critic x 3 delays x 2 seeds, in one run
        assert len(report.rows) == data["agents"] == 30
        assert {r["critic_lr"] for r in report.rows} == {1e-3, 0.3}
        assert {r["critic_updates_per_actor_update"] for r in report.rows} == {1, 2, 8}
    if study == "argmax":
        rows = {(r["states"], r["method"]): r for r in report.rows}
        for where in ("on-policy", "uniform"):
            assert rows[(where, "grid of 2001 actions")]["mean_gap"] == 0.0
            assert all(r["mean_gap"] >= 0 and math.isfinite(r["us_per_state"]) for r in report.rows)


@pytest.mark.skipif(importlib.util.find_spec("stable_baselines3") is None, reason="SB3 is a bench-only extra")
def test_actor_critic_baseline_quick(tmp_path):
    report = run_study("actor_critic", ["--study", "baseline", "--quick", "--out", str(tmp_path)])
    methods = [r["method"] for r in report.rows]
    assert methods == ["doubleopt TD3 (Zoo config)", "Stable-Baselines3 TD3 (Zoo config)",
                       "doubleopt TD3 (fast preset)", "doubleopt SAC (fast preset)"]
    data = json.loads((tmp_path / "baseline" / "results.json").read_text())
    assert data["zoo_time_ratio"] > 0 and len(data["sb3_returns"]) == 1
    assert data["zoo_arithmetic"]["flop_per_update_per_seed"] > 0
