"""Smoke run of `doubleopt bench qp -- --quick` (the benchmark against qpth / cvxpylayers)."""

import importlib.util
import json

from doubleopt.bench import run_study


def test_qp_bench_quick(tmp_path):
    report = run_study("qp", ["--quick", "--threads", "1", "--out", str(tmp_path)])
    methods = [r["method"] for r in report.rows]
    assert methods[0].startswith("doubleopt")
    data = json.loads((tmp_path / "results.json").read_text())
    if importlib.util.find_spec("qpth") is not None:  # a benchmark-only dependency
        assert any(m.startswith("qpth") for m in methods)
        assert data["agreement_max_abs_dz"]["qpth"] < 1e-6
    for row in data["scaling"]:
        assert row["f32_inputs_max_err"] < 1e-4  # float32 inputs, float64 interior point
    assert (tmp_path / "qp.png").stat().st_size > 0
