"""Smoke run of `doubleopt bench qp -- --quick` (the benchmark against qpth / cvxpylayers)."""

import importlib.util
import json

from doubleopt.bench import run_study


def test_qp_bench_quick(tmp_path):
    # the study requires its baselines (qpth always, cvxpylayers unless --skip-cvxpylayers)
    skip = [] if importlib.util.find_spec("cvxpylayers") is not None else ["--skip-cvxpylayers"]
    report = run_study("qp", ["--quick", "--threads", "1", "--out", str(tmp_path), *skip])
    methods = [r["method"] for r in report.rows]
    assert methods[0].startswith("doubleopt")
    data = json.loads((tmp_path / "results.json").read_text())
    # qpth and cvxpylayers are installed by the set-up (make install / make test): their agreement is checked here
    assert importlib.util.find_spec("qpth") is not None, "qpth missing: make install (pip install --no-deps qpth)"
    assert any(m.startswith("qpth") for m in methods)
    assert data["agreement_max_abs_dz"]["qpth"] < 1e-6
    assert all(r["accuracy"] and r["threads"] == 1 for r in report.rows)  # each ratio with its setting
    if importlib.util.find_spec("cvxpylayers") is not None:  # a benchmark-only dependency
        cvx = [r for r in report.rows if r["method"].startswith("cvxpylayers")]
        assert [r["accuracy"].split(",")[0] for r in cvx] == [
            "SCS eps_abs = eps_rel = 1e-10",
            "SCS defaults: eps_abs = eps_rel = 1e-4",
        ]
        assert data["agreement_max_abs_dz"][cvx[0]["method"]] < 1e-4
    for row in data["scaling"]:
        assert row["f32_inputs_max_err"] < 1e-4  # float32 inputs, float64 interior point
    assert (tmp_path / "qp.png").stat().st_size > 0
