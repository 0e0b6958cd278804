"""The stress run (scripts/stress.py, issue 18): a short run passes, and its checks fail when they should.

The script itself is the long run (``.venv/bin/python scripts/stress.py --threads 4 --processes 2 --seconds 60``);
here it runs for a few seconds with 2 threads x 2 processes from one fresh kernel cache (the build race), and once
with a deliberate leak and a corrupted result, which it must report.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "stress.py"
CASES = ("qp_solve (native kernel)", "qp_solve (shared matrices, B=32)", "qp_solve + KKT backward",
         "qp_solve (warm start)", "do.solve L-BFGS (logistic)", "do.solve Newton + Implicit", "Sinkhorn (sphere OT)")


def _stress(*args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(SCRIPT.parents[1] / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_a_short_stress_run_passes():
    run = _stress("--threads", "2", "--processes", "2", "--seconds", "3", "--fresh-cache", "--quiet")
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "doubleopt stress run: 2 process(es) x 2 thread(s), 3 s" in out and "fresh cache" in out
    for case in CASES:  # each case ran in every thread of both processes, without a mismatch
        row = re.search(rf"^{re.escape(case)}\s+(\d+)\s+(\d+)\s+(\S+)$", out, re.M)
        assert row is not None, (case, out)
        assert int(row.group(1)) >= 2 * 2 * 3 and int(row.group(2)) == 0, row.group(0)
    assert "single-threaded references of the 2 process(es): identical" in out
    assert len(re.findall(r"process \d: \d+ -> \d+ MiB", out)) == 2
    assert out.rstrip().splitlines()[-1].startswith("result: OK")


@pytest.mark.slow
def test_the_stress_run_reports_a_leak_and_a_mismatch():
    """The checks are live: a leak of 8 MiB per loop crosses a 4 MiB bound, a corrupted result is a mismatch, and
    the exit code is 1."""
    run = _stress("--threads", "1", "--processes", "1", "--seconds", "1", "--quiet", "--inject", "leak",
                  "--inject", "mismatch", "--max-growth-mib", "4")
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    assert "result: FAILED" in out
    assert "qp_solve (native kernel): 1 mismatches with the single-threaded reference" in out
    assert re.search(r"process 0: resident memory grew \+\d+\.\d MiB .* over the bound of 4 MiB", out), out


def test_bad_arguments_exit_with_code_2():
    run = _stress("--threads", "0")
    assert run.returncode == 2 and "--threads must be >= 1" in run.stderr
