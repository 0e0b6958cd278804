"""The command line: help, demo, bench registry and a smoke run of the solvers study."""

import json
import subprocess
import sys
from pathlib import Path

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


def test_python_dash_m_doubleopt_is_the_doubleopt_command():
    """``python -m doubleopt ARGS`` and the console script ``doubleopt ARGS`` print the same and exit the same:
    help, the study list, and a user error (one line, exit code 2)."""
    script = Path(sys.executable).with_name("doubleopt")
    assert script.is_file(), f"the console script is not installed next to {sys.executable}"
    for argv in (["--help"], ["bench"], ["bench", "no-such-study"]):
        by_module = subprocess.run([sys.executable, "-m", "doubleopt", *argv], capture_output=True, text=True)
        by_script = subprocess.run([str(script), *argv], capture_output=True, text=True)
        assert (by_module.returncode, by_module.stdout, by_module.stderr) == (
            by_script.returncode,
            by_script.stdout,
            by_script.stderr,
        ), argv
    assert by_module.returncode == 2 and "unknown study 'no-such-study'" in by_module.stderr
    assert "Traceback" not in by_module.stderr
