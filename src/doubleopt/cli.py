"""The ``doubleopt`` command.

Sub-commands: ``demo`` (the main job on built-in defaults: the amortization demo; ``--kind solvers`` for the
comparison of every classical solver), ``bench [NAME ...]`` (the studies of
:mod:`doubleopt.bench.studies`), plus commands that feature packages register (``train-lopt``, ...): a module listed in
``_PLUGINS`` that exposes ``register(subparsers)`` adds its own sub-command.

User mistakes end in one line on stderr and exit code 2, never a traceback. Where the line is drawn
(:func:`is_user_error`): argparse's own errors (flag syntax, the ``type=`` converters below: a count that
must be positive, a finite rate), a ``ValueError`` raised by a ``raise`` statement in doubleopt's own code or
in a study (the argument checks of the library, which name the argument), a file-system error (``OSError``:
missing file, folder in place of a file, no permission), a safetensors error (a corrupt or truncated weights /
checkpoint file) and a study's missing baseline (:class:`~doubleopt.bench.baselines.MissingBaseline`: it names the
package and the command that installs it). Anything else (a ``ValueError`` raised inside a dependency, tuple
unpacking, ``TypeError``, ``RuntimeError``, ...) is a bug of ours and keeps its traceback;
``DOUBLEOPT_TRACEBACK=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import importlib
import linecache
import math
import os
import sys
from pathlib import Path

_PLUGINS = [
    "doubleopt.learned._cli",
    "doubleopt.amortized._cli",
    "doubleopt.physical._cli",
    "doubleopt.layers._cli",
    "doubleopt.rl._cli",
]


# ---- argparse converters: a bad value is refused while parsing, with the flag's name --------------------------
def positive_int(text: str) -> int:
    """``type=`` for counts that must be >= 1 (steps, batch sizes, threads)."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """``type=`` for counts where 0 means "none" / "off"."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
    return value


def positive_float(text: str) -> float:
    """``type=`` for finite numbers > 0 (learning rates, scales)."""
    value = _finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """``type=`` for finite numbers >= 0 (0 usually meaning "off")."""
    value = _finite_float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    """``type=`` for numbers in ``(0, 1]`` (a discount)."""
    value = _finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


# ---- the user-error boundary ---------------------------------------------------------------------------------
_OUR_DIRS = (Path(__file__).resolve().parent,)  # the package, its studies (doubleopt.bench.studies) included


def _safetensors_error() -> tuple[type[BaseException], ...]:
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return ()
    return (SafetensorError,)


def _raised_by_our_check(exc: BaseException) -> bool:
    """The innermost frame of ``exc``'s traceback is a ``raise`` statement in doubleopt's code (or a study's)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    try:
        path = Path(filename).resolve()
    except OSError:  # pragma: no cover
        return False
    if not any(path.is_relative_to(d) for d in _OUR_DIRS):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def is_user_error(exc: BaseException) -> bool:
    """Whether the CLI reports ``exc`` as one line (a user mistake) instead of a traceback (a bug); see the module
    docstring for where the line is drawn."""
    from .bench.baselines import MissingBaseline

    if isinstance(exc, (OSError, MissingBaseline, *_safetensors_error())):
        return True
    return type(exc) is ValueError and _raised_by_our_check(exc)


def _one_line(command: str, exc: BaseException) -> str:
    if isinstance(exc, _safetensors_error()):
        text = f"cannot read a safetensors file (corrupt, truncated or not safetensors): {exc}"
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())  # one line, whatever the message held
    return f"doubleopt {command}: error: {text}"


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.kind == "amortized":
        from .amortized.meta_ot_showcase import run_demo
    else:
        from .solver_comparison import run_demo

    run_demo(out_dir=args.out, quick=args.quick)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import find_studies, run_study

    studies = find_studies()
    if not args.names:
        print("available studies:", ", ".join(studies))
        return 0
    names = list(studies) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in studies]
    if unknown:
        raise ValueError(f"unknown study {unknown[0]!r}; available: {', '.join(studies) or '(none found)'}")
    for name in names:
        print(f"== study {name} ==", flush=True)
        run_study(name, args.study_args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="doubleopt", description="Double optimization in PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo",
        help="the main job on built-in defaults: train an amortized solver, then compare classical, "
        "amortized and safeguarded solves (--kind solvers: every classical solver on one family)",
    )
    p.add_argument("--kind", choices=["amortized", "solvers"], default="amortized", help="which demo to run")
    p.add_argument("--out", default="demo_results", help="folder for the plot and JSON results")
    p.add_argument("--quick", action="store_true", help="smaller sizes (seconds)")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("bench", help="run registered studies: doubleopt bench NAME [-- study args]")
    p.add_argument("names", nargs="*", help="study names ('all' for every study; none to list them)")
    p.set_defaults(func=_cmd_bench, study_args=[])
    for mod in _PLUGINS:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and mod.startswith(e.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    study_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, study_args = argv[:i], argv[i + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        args.study_args = study_args
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"doubleopt {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not is_user_error(e) or os.environ.get("DOUBLEOPT_TRACEBACK", "") not in ("", "0"):
            raise
        print(_one_line(args.command, e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
