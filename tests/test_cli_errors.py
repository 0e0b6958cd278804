"""The command line answers a user mistake with one line on stderr and a non-zero exit code, never a traceback;
an internal bug keeps its traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from doubleopt import cli
from doubleopt.cli import is_user_error, main

WEIGHTS = Path(cli.__file__).parent / "learned" / "weights" / "mlp-digits.safetensors"


def _error_line(capsys, argv):
    """Run ``main(argv)``; argparse errors exit 2 via SystemExit, our boundary returns 2."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code not in (0, None), err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "no message on stderr"
    return lines[-1]


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["train-lopt", "--meta-steps", "-3"], "--meta-steps"),
        (["train-lopt", "--meta-steps", "abc"], "--meta-steps"),
        (["train-lopt", "--threads", "0"], "--threads"),
        (["train-lopt", "--meta-lr", "nan"], "--meta-lr"),
        (["train-lopt", "--clip", "-1"], "--clip"),
        (["train-lopt", "--option", "epochs"], "NAME=VALUE"),
        (["train-lopt", "--option", "epochs=abc"], "epochs"),
        (["train-lopt", "--arch", "transformer"], "--arch"),
        (["physical-train", "--steps", "0"], "--steps"),
        (["rl-train", "--gamma", "1.5"], "--gamma"),
        (["rl-train", "--critic-lr", "-0.1"], "--critic-lr"),
        (["rl-train", "--hidden", "0"], "--hidden"),
        (["rl-train", "--seeds"], "--seeds"),
        (["demo", "--kind", "nope"], "--kind"),
    ],
)
def test_bad_flag_values_are_refused_while_parsing(capsys, argv, expect):
    line = _error_line(capsys, argv)
    assert expect in line


def test_unknown_estimator_option_is_one_line(capsys, tmp_path):
    line = _error_line(capsys, ["train-lopt", "--option", "foo=1", "--out", str(tmp_path), "--no-progress"])
    assert line.startswith("doubleopt train-lopt: error:") and "foo" in line
    assert not (tmp_path / "record.json").exists()


def test_missing_and_corrupt_weights(capsys, tmp_path):
    base = ["train-lopt", "--meta-steps", "1", "--out", str(tmp_path / "run"), "--no-progress"]
    line = _error_line(capsys, base + ["--init-weights", str(tmp_path / "missing.safetensors")])
    assert "missing.safetensors" in line
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"not a safetensors file")
    line = _error_line(capsys, base + ["--init-weights", str(bad)])
    assert "safetensors" in line
    line = _error_line(capsys, base + ["--init-weights", str(tmp_path)])  # a folder
    assert line.startswith("doubleopt train-lopt: error:")
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(WEIGHTS.read_bytes()[:100])
    line = _error_line(capsys, base + ["--arch", "mlp", "--init-weights", str(truncated)])
    assert "safetensors" in line


def test_weights_of_another_architecture(capsys, tmp_path):
    argv = ["train-lopt", "--arch", "lstm", "--init-weights", str(WEIGHTS), "--out", str(tmp_path)]
    line = _error_line(capsys, argv)
    assert "LSTMOptimizer" in line


@pytest.mark.parametrize("command", ["train-lopt", "rl-train"])
def test_corrupt_checkpoint_on_resume(capsys, tmp_path, command):
    (tmp_path / "checkpoint.safetensors").write_bytes(b"\x00" * 3)
    argv = [command, "--out", str(tmp_path), "--resume", "--no-progress"]
    argv += ["--meta-steps", "1"] if command == "train-lopt" else ["--steps", "300", "--seeds", "0"]
    line = _error_line(capsys, argv)
    assert line.startswith(f"doubleopt {command}: error:") and "safetensors" in line
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == b"\x00" * 3  # nothing on disk is lost


def test_library_argument_checks_reach_the_user(capsys, tmp_path):
    line = _error_line(capsys, ["physical-train", "--nodes", "0", "--out", str(tmp_path)])
    assert line == "doubleopt physical-train: error: n_nodes must be an integer >= 4 for dim=2, got 0"
    line = _error_line(capsys, ["physical-train", "--nodes", "20", "--eta", "-1", "--out", str(tmp_path)])
    assert "eta" in line
    line = _error_line(capsys, ["rl-train", "--batch-size", "0", "--out", str(tmp_path)])
    assert "--batch-size" in line


def test_bench_unknown_study_and_unwritable_output(capsys, tmp_path):
    line = _error_line(capsys, ["bench", "no_such_study"])
    assert "no_such_study" in line and "available" in line
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = _error_line(capsys, ["demo", "--quick", "--out", str(blocker / "sub")])
    assert line.startswith("doubleopt demo: error:")


def test_console_script_shows_no_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "doubleopt", "physical-train", "--nodes", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "doubleopt physical-train: error: n_nodes must be an integer >= 4 for dim=2, got 2"
    ]


def _raise(exc):
    raise exc


def _unpack(t):
    a, b = t
    return a + b


def test_boundary_between_user_errors_and_bugs(tmp_path):
    # our own argument check (a raise statement in doubleopt): a user error
    from doubleopt.physical import random_graph

    with pytest.raises(ValueError) as info:
        random_graph(1)
    assert is_user_error(info.value)
    # file-system and safetensors errors: user errors wherever they come from
    with pytest.raises(OSError) as info:
        open(tmp_path / "missing")
    assert is_user_error(info.value)
    from safetensors.torch import load_file

    (tmp_path / "bad").write_bytes(b"\x01")
    with pytest.raises(Exception) as info:
        load_file(str(tmp_path / "bad"))
    assert is_user_error(info.value)
    # a ValueError raised inside a dependency, a failed unpacking, a TypeError, a RuntimeError: bugs
    import numpy as np

    with pytest.raises(ValueError) as info:
        np.zeros(2).reshape(3)  # raised inside NumPy
    assert not is_user_error(info.value)
    with pytest.raises(ValueError) as info:
        _unpack((1, 2, 3))
    assert not is_user_error(info.value)
    with pytest.raises(ValueError) as info:
        int("x")
    assert not is_user_error(info.value)
    for exc in (TypeError("bug"), RuntimeError("bug"), KeyError("bug")):
        with pytest.raises(type(exc)) as info:
            _raise(exc)
        assert not is_user_error(info.value)


def test_internal_bug_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise RuntimeError("an internal bug")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices["demo"].set_defaults(func=broken)
    with pytest.raises(RuntimeError, match="an internal bug"):
        main(["demo"])


def test_traceback_on_request(monkeypatch, tmp_path):
    monkeypatch.setenv("DOUBLEOPT_TRACEBACK", "1")
    with pytest.raises(ValueError, match="n_nodes"):
        main(["physical-train", "--nodes", "0", "--out", str(tmp_path)])
