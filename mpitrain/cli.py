"""`python -m mpitrain SUBCOMMAND ...`"""
from __future__ import annotations

import argparse
import sys

from .errors import UsageError

COMMANDS = ["train", "prepare", "plan", "submit", "eval", "export", "checkpoint", "selfcheck", "bench", "keys",
            "report"]


def _module(name: str):
    import importlib

    return importlib.import_module(f"mpitrain.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mpitrain",
        description="MPI-native data- and pipeline-parallel training for PyTorch. "
                    "Start ranks with mpirun/mpiexec/srun, e.g. mpirun -n 4 python -m mpitrain selfcheck JOB.toml")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = _module(name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(run=mod.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["train"] + argv  # `python -m mpitrain [JOB.toml] [--set ...]` trains
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except UsageError as e:
        from .failure import abort, error_line

        abort(e.exit_code, error_line(e))
