"""The command line: help, demo, bench registry and a smoke run of the solvers study."""

import json
import subprocess
import sys

from doubleopt.bench import find_studies
from doubleopt.cli import main


def test_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "bench"):
        assert cmd in out


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "doubleopt.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "bench" in r.stdout


def test_bench_lists_studies(capsys):
    assert main(["bench"]) == 0
    out = capsys.readouterr().out
    assert "solvers" in out
    assert "solvers" in find_studies()


def test_solvers_study_quick(tmp_path):
    main(["bench", "solvers", "--", "--quick", "--threads", "1", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["lbfgs_max_abs_diff_vs_scipy"] < 1e-4
    assert data["adam_max_abs_diff_vs_torch"] < 1e-8
    assert (tmp_path / "solvers.png").exists() and (tmp_path / "table.md").exists()


def test_solver_demo_quick(tmp_path, capsys):
    assert main(["demo", "--kind", "solvers", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "L-BFGS" in out and "64/64" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert {r["solver"] for r in data["rows"]} >= {"Adam", "L-BFGS", "Newton", "FISTA"}
    assert (tmp_path / "demo.png").exists()


def test_python_dash_m_doubleopt_help():
    r = subprocess.run([sys.executable, "-m", "doubleopt", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "doubleopt" in r.stdout
