"""The study harness's argument parser: help text from the fields' comments."""

import contextlib
import dataclasses
import io

from doubleopt.bench import parse_args
from doubleopt.bench.timing import field_help


def test_study_arguments_get_their_comment_as_help():
    @dataclasses.dataclass
    class Args:
        steps: int = 3  # training steps (10% of the budget)
        quick: bool = False  # a smoke run
        names: tuple = ("a",)

    assert field_help(Args) == {"steps": "training steps (10% of the budget)", "quick": "a smoke run"}
    assert parse_args(Args, ["--steps", "5", "--quick"]) == Args(steps=5, quick=True, names=["a"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parse_args(Args, ["--help"])
    assert "training steps (10% of the budget) (default: 3)" in " ".join(out.getvalue().split())
    assert "a smoke run" in out.getvalue()


def test_study_help_shows_the_args_docstring_dedented():
    @dataclasses.dataclass
    class Args:
        """What the study compares.

        Under which conditions: same tolerance, same threads.
        """

        steps: int = 3  # training steps

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parse_args(Args, ["--help"])
    assert "\nWhat the study compares.\n\nUnder which conditions: same tolerance, same threads.\n" in out.getvalue()


def test_every_study_documents_its_arguments():
    """Each study's Args has its own docstring (what is compared, under which conditions), not the dataclass's
    generated signature, and every field has a help comment, so ``doubleopt bench NAME -- --help`` is useful."""
    import importlib

    from doubleopt.bench.registry import PACKAGE, study_names

    for name in study_names():
        args_cls = importlib.import_module(f"{PACKAGE}.{name}").Args
        doc = args_cls.__doc__ or ""
        assert doc and not doc.startswith("Args("), f"study {name}: Args has no docstring"
        missing = [f.name for f in dataclasses.fields(args_cls) if f.name not in field_help(args_cls)]
        assert not missing, f"study {name}: fields without a help comment: {missing}"
