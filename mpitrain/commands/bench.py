"""Benchmarks that print mpitrain's figures next to a named peer's, measured in
the same run on the same ranks. Start them under mpirun, e.g.
`mpirun -n 2 python -m mpitrain bench allreduce --sizes 4KiB,64MiB`."""
from __future__ import annotations

import argparse
import importlib

HELP = "benchmarks against peers: allreduce, dp (training vs DDP), pipeline, gpt, checkpoint, tp, precision, ner-reference"
BENCHES = {"allreduce": "allreduce", "dp": "dp_training", "pipeline": "pipeline", "gpt": "gpt",
           "checkpoint": "checkpoint", "tp": "tp", "precision": "precision",
           "ner-reference": "ner_reference"}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, module in BENCHES.items():
        mod = importlib.import_module(f"mpitrain.bench.{module}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(bench_run=mod.run)


def run(args) -> int:
    from ..failure import install_failure_handler

    install_failure_handler()
    return args.bench_run(args)
