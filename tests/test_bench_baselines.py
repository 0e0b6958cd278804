"""The studies' third-party baselines: imported only through ``doubleopt.bench.baselines.require``; a missing one
stops ``doubleopt bench NAME`` at once with one line naming the package and how to install it (exit code 2)."""

import ast
import sys
from pathlib import Path

import pytest

from doubleopt.bench import baselines, registry
from doubleopt.bench.baselines import EXTRA, MissingBaseline, require
from doubleopt.cli import main

STUDIES_DIR = Path(registry._studies.__file__).parent


def _block(monkeypatch, top: str) -> None:
    """Make ``import top`` (and its submodules) fail as if the package were not installed."""
    for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, top, None)  # the import system then raises ModuleNotFoundError(name=top)


def test_require_returns_the_module():
    ot = require("ot", "a test")
    assert callable(ot.sinkhorn)
    assert require("ot.bregman", "a test").__name__ == "ot.bregman"


def test_require_names_the_package_and_the_extra(monkeypatch):
    _block(monkeypatch, "ot")
    with pytest.raises(MissingBaseline) as info:
        require("ot", "the Sinkhorn baseline of the meta_ot study")
    msg = str(info.value)
    assert msg == f"POT is not installed (the Sinkhorn baseline of the meta_ot study): {EXTRA}"
    assert "\n" not in msg and isinstance(info.value.__cause__, ModuleNotFoundError)


def test_qpth_gets_its_own_install_command(monkeypatch):
    _block(monkeypatch, "qpth")
    with pytest.raises(MissingBaseline, match=r"^qpth is not installed \(x\): pip install --no-deps qpth==0\.0\.18"):
        require("qpth.qp", "x")


def test_installed_but_broken_baseline(monkeypatch, tmp_path):
    """A baseline whose own dependency is missing is reported as such, with the original error."""
    pkg = tmp_path / "broken_baseline_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import no_such_module_of_doubleopt_tests\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(baselines.INSTALL, "broken_baseline_pkg", ("broken-baseline", EXTRA))
    with pytest.raises(MissingBaseline) as info:
        require("broken_baseline_pkg", "a test")
    msg = str(info.value)
    assert msg.startswith("broken-baseline is installed but does not import (a test): ")
    assert "no_such_module_of_doubleopt_tests" in msg and msg.endswith(f"reinstall it: {EXTRA}")


def test_unknown_package_is_a_programming_error():
    with pytest.raises(ValueError, match="'numpy' is not a known baseline package"):
        require("numpy", "a test")


@pytest.mark.parametrize(
    ("study", "study_args", "blocked", "expect", "first_work"),
    [
        ("qp", [], "qpth", "qpth is not installed (the OptNet baseline of the qp study): pip install --no-deps qpth",
         "Report"),
        ("qp", [], "cvxpylayers", "cvxpylayers is not installed (the cvxpylayers baseline of the qp study", "Report"),
        ("meta_ot", [], "ot", f"POT is not installed (the Sinkhorn baseline of the meta_ot study): {EXTRA}", "Report"),
        ("actor_critic", ["--study", "baseline"], "stable_baselines3", "stable-baselines3 is not installed", "Report"),
        ("bilevel", ["--studies", "torchopt"], "torchopt", "torchopt is not installed", "Report"),
        ("qp_warmstart", [], "osqp", f"osqp is not installed (the OSQP baseline of the qp_warmstart study): {EXTRA}",
         "PrimalDualQP"),
    ],
)
def test_cli_stops_a_study_at_once_with_one_line(
    monkeypatch, capsys, tmp_path, study, study_args, blocked, expect, first_work
):
    _block(monkeypatch, blocked)
    monkeypatch.delenv("DOUBLEOPT_TRACEBACK", raising=False)
    # the study's first piece of work raises _Reached (not a user error: main would let it through): the missing
    # baseline must be found before it
    monkeypatch.setattr(registry.load_study(study), first_work, _stop_here)
    code = main(["bench", study, "--", "--quick", "--out", str(tmp_path), *study_args])
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("doubleopt bench: error: "), captured.err
    assert expect in lines[0]


def test_cvxpylayers_is_optional_with_its_flag(monkeypatch):
    """``--skip-cvxpylayers`` runs the qp study without cvxpylayers: its start check does not ask for it."""
    _block(monkeypatch, "cvxpylayers")
    monkeypatch.setattr(registry.load_study("qp"), "make", _stop_here)
    with pytest.raises(_Reached):
        registry.run_study("qp", ["--quick", "--skip-cvxpylayers"])


class _Reached(Exception):
    pass


def _stop_here(*args, **kwargs):
    raise _Reached


def test_studies_import_their_baselines_only_through_require():
    """No study imports a baseline package directly (a missing one would surface as a traceback, not the line)."""
    offenders = []
    for path in sorted(STUDIES_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in baselines.INSTALL]
    assert not offenders, offenders
