"""doubleopt installed like any package: build the wheel, install it into a fresh virtual environment (which reuses
this environment's torch and other dependencies, not its editable doubleopt) and, from a folder outside the
repository, run ``doubleopt --help``, ``doubleopt bench`` (the study list) and one quick study.

Offline: the wheel is built without build isolation (setuptools of this environment) and installed with
``--no-deps --no-index``.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from doubleopt.bench.registry import study_names

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # about 30 s: a build, an install and four fresh processes


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    shown = " ".join(map(str, cmd))
    assert r.returncode == 0, f"{shown} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the new environment's bin folder, a working folder outside the repository, the subprocess environment)."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"

    # build from a copy of the sources, so that the build's own files (build/, *.egg-info) stay out of the checkout
    src = tmp / "source"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist),
          str(src)], tmp, env)  # fmt: skip
    (wheel,) = dist.glob("doubleopt-*.whl")

    # a fresh environment (no pip, no doubleopt); the wheel goes in first, then a .pth file hands it this
    # environment's site-packages for the dependencies. A .pth line is only appended to sys.path (the .pth files
    # in that folder, among them the editable install's, are not run), so `import doubleopt` finds the wheel's.
    envdir = tmp / "env"
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(envdir)
    bindir = envdir / ("Scripts" if os.name == "nt" else "bin")
    py = bindir / Path(sys.executable).name
    if not py.exists():
        py = bindir / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)],
         tmp, env)  # fmt: skip
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(_run([str(py), "-c", purelib], tmp, env).stdout.strip())
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "_doubleopt_test_dependencies.pth").write_text("".join(p + "\n" for p in sorted(ours)))

    work = tmp / "work"  # outside the repository: nothing here to find studies in
    work.mkdir()
    return bindir, py, work, env, wheel


def test_wheel_ships_the_studies_and_the_package_data(installed):
    *_, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for study in study_names():
        assert f"doubleopt/bench/studies/{study}.py" in names
    assert "doubleopt/bench/studies/__init__.py" in names
    assert "doubleopt/solvers/_native/qp_ipm.c" in names  # the native kernel is built from its source at run time
    assert any(n.startswith("doubleopt/learned/weights/") and n.endswith(".safetensors") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Provides-Extra: bench" in metadata and 'extra == "bench"' in metadata


def test_installed_wheel_runs_outside_the_repository(installed):
    bindir, py, work, env, _ = installed
    where = _run([str(py), "-c", "import doubleopt; print(doubleopt.__file__)"], work, env).stdout.strip()
    assert Path(where).resolve().is_relative_to(bindir.parent.resolve()), where  # the wheel's, not the checkout's

    doubleopt = str(bindir / "doubleopt")
    usage = _run([doubleopt, "--help"], work, env).stdout
    assert "bench" in usage and _run([str(py), "-m", "doubleopt", "--help"], work, env).stdout == usage

    listed = _run([doubleopt, "bench"], work, env).stdout
    assert "(none found)" not in listed
    available = {s.strip() for s in listed.split(":", 1)[1].split(",")}
    assert available == set(study_names()) and {"qp", "solvers", "physical_hessian"} <= available

    out = work / "results"
    r = _run([doubleopt, "bench", "physical_hessian", "--", "--quick", "--threads", "1", "--out", str(out)], work, env)
    assert "== study physical_hessian ==" in r.stdout
    data = json.loads((out / "results.json").read_text())
    assert data["rows"] and (out / "table.md").is_file()
    assert not (work / "bench_results").exists() and sorted(p.name for p in work.iterdir()) == ["results"]
