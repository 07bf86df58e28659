"""Train the job's task on every rank of the grid (dp x pp): the Trainer runs the
epochs, evaluates the dev split after each and the test split at the end, and
exports the model when the task can.

Results go to the run directory: metrics.jsonl (a line per logged step and per
epoch), eval_dev.json, eval_test.json, and model/ (the task's export). A run
directory that already holds results is never overwritten: the next free name
(RUN_DIR-2, RUN_DIR-3, ...) is used instead."""
from __future__ import annotations

from importlib import resources

from ..runtime import add_job_arguments, start_job

HELP = "train a job (the default job when no job file is given)"


def default_job() -> str:
    """The default job file, shipped inside the package."""
    return str(resources.files("mpitrain") / "jobs" / "default.toml")


def add_arguments(parser) -> None:
    add_job_arguments(parser, job_required=False)


def run(args) -> int:
    from ..train.trainer import Trainer

    if args.job is None:
        args.job = default_job()
    trainer = Trainer(started=start_job(args))
    trainer.fit()
    trainer.close()
    return 0
