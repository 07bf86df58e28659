"""Export a checkpoint with its task's exporter (for the built-in tasks a
Hugging Face directory), from any layout."""
from __future__ import annotations

from ..runtime import add_job_arguments, start_job

HELP = "write a checkpoint's model in the task's export format (e.g. Hugging Face)"


def add_arguments(parser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a step-NNNNNNNN checkpoint directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the model")


def run(args) -> int:
    from ..errors import UsageError
    from ..failure import agree_or_exit
    from ..train.trainer import Trainer

    trainer = Trainer(started=start_job(args), training=False)

    def check():
        if not hasattr(trainer.task, "export"):
            raise UsageError(f"task {trainer.cfg.job.task!r} has no export; nothing to write")
    agree_or_exit(check, trainer.topo.world)
    trainer.load_checkpoint(args.checkpoint, with_optimizer=False)
    out = trainer.task.export(trainer, args.out)
    if trainer.topo.rank == 0:
        print(f"exported {args.checkpoint} to {out}")
    trainer.close()
    return 0
