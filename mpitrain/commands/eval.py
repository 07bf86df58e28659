"""Evaluate a checkpoint on any layout: the job's task computes its metrics of
the named splits (default: every split the task has) and rank 0 prints them as
JSON. Nothing is written to the run directory."""
from __future__ import annotations

import json

from ..runtime import add_job_arguments, start_job

HELP = "evaluate a checkpoint on the job's splits (any layout)"


def add_arguments(parser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a step-NNNNNNNN checkpoint directory")
    parser.add_argument("--split", action="append", default=[], metavar="NAME",
                        help="split to evaluate (repeatable; default: all)")


def run(args) -> int:
    from ..train.trainer import Trainer

    trainer = Trainer(started=start_job(args), training=False)
    manifest = trainer.load_checkpoint(args.checkpoint, with_optimizer=False)
    results = {"checkpoint": str(args.checkpoint), "step": manifest["state"]["step"]}
    for split in args.split or [s for s in ("train", "dev", "test") if s in trainer.datasets]:
        results[split] = trainer.evaluate(split)
    if trainer.topo.rank == 0:
        print(json.dumps({k: ({m: v for m, v in r.items() if m != "report"} if isinstance(r, dict) else r)
                          for k, r in results.items()}, indent=1))
    trainer.close()
    return 0
