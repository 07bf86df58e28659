"""Train the job's task on every rank of the grid (dp x pp): the Trainer runs the
epochs, evaluates the dev split after each and the test split at the end, and
exports the model when the task can.

Results go to the run directory: metrics.jsonl (a line per logged step and per
epoch), eval_dev.json, eval_test.json, model/ (the task's export) and
checkpoints/. The same job, unfinished, continues in its own run directory from
its newest valid checkpoint; a finished run is never overwritten (the next free
RUN_DIR-2, RUN_DIR-3, ... is used); a directory holding another job's run is
refused."""
from __future__ import annotations

from importlib import resources

from ..runtime import add_job_arguments, start_job

HELP = "train a job (the default job when no job file is given)"


def default_job() -> str:
    """The default job file, shipped inside the package."""
    return str(resources.files("mpitrain") / "jobs" / "default.toml")


def add_arguments(parser) -> None:
    add_job_arguments(parser, job_required=False)
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                        help="continue an unfinished run of this job from its newest valid checkpoint "
                             "(the default, [checkpoint] resume = \"auto\"), or start from CHECKPOINT")
    parser.add_argument("--trace", nargs="?", const=3, type=int, default=None, metavar="STEPS",
                        help="write RUN_DIR/trace.json: every rank's spans over STEPS steps (default 3) "
                             "after warm-up, one track per rank ([runtime] trace_steps)")


def run(args) -> int:
    from ..slurm.stop import STOP

    STOP.install()  # from the start: a stop signal during set-up is acted on at the first step
    from ..train.trainer import Trainer

    if args.job is None:
        args.job = default_job()
    if args.resume is not None:
        args.set = list(args.set) + [f"checkpoint.resume={args.resume!r}".replace("'", '"')]
    if args.trace is not None:
        args.set = list(args.set) + [f"runtime.trace_steps={args.trace}"]
    trainer = Trainer(started=start_job(args))
    trainer.fit()
    trainer.close()
    return 0
