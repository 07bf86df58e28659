"""Prepare a job's data with its task (for the NER task: read the CoNLL splits or
generate the synthetic corpus, tokenize, write one HDF5 file per split; for the
GPT task: train the tokenizer and pack text into blocks). Files whose inputs are
unchanged are reused. Under mpirun only rank 0 works."""
from __future__ import annotations

from ..failure import agree_or_exit
from ..jobfile import load_job

HELP = "prepare a job's data (e.g. tokenize into HDF5 files; reused when inputs are unchanged)"


def add_arguments(parser) -> None:
    from ..runtime import add_job_arguments

    add_job_arguments(parser)


def run(args) -> int:
    from mpi4py import MPI

    from ..failure import install_failure_handler, on_root_or_exit

    install_failure_handler()
    world = MPI.COMM_WORLD
    cfg = agree_or_exit(lambda: load_job(args.job, args.set), world)
    prepared = on_root_or_exit(lambda: cfg.task.prepare(cfg), world)
    if world.Get_rank() == 0:
        describe = getattr(cfg.task, "describe", None)
        print(describe(prepared) if describe else f"prepared: {prepared!r}")
    return 0
