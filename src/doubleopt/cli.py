"""The ``doubleopt`` command.

Sub-commands: ``demo`` (the main job on built-in defaults: the amortization demo; ``--kind solvers`` for the
comparison of every classical solver), ``bench [NAME ...]`` (registered studies under
``benchmarks/``), plus commands that feature packages register (``train-lopt``, ...): a module listed in
``_PLUGINS`` that exposes ``register(subparsers)`` adds its own sub-command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_PLUGINS = [
    "doubleopt.learned._cli",
    "doubleopt.amortized._cli",
    "doubleopt.physical._cli",
    "doubleopt.layers._cli",
    "doubleopt.rl._cli",
]


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.kind == "amortized":
        from .amortized.demo import run_demo
    else:
        from .demo import run_demo

    run_demo(out_dir=args.out, quick=args.quick)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import find_studies, run_study

    studies = find_studies()
    if not args.names:
        print("available studies:", ", ".join(studies))
        return 0
    names = list(studies) if args.names == ["all"] else args.names
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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
