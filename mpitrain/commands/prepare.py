"""Prepare a job's data: read the CoNLL splits (or generate the synthetic corpus),
tokenize with the model's vocabulary and write one HDF5 file per split. Files whose
inputs are unchanged are reused. Under mpirun only rank 0 works."""
from __future__ import annotations

from ..failure import agree_or_exit
from ..jobfile import load_job

HELP = "tokenize a job's data into HDF5 files (reused when inputs are unchanged)"


def add_arguments(parser) -> None:
    from ..runtime import add_job_arguments

    add_job_arguments(parser)


def run(args) -> int:
    from mpi4py import MPI

    from ..failure import install_failure_handler, on_root_or_exit
    from ..ner import task
    from ..ner.dataset import NerH5Dataset

    install_failure_handler()
    world = MPI.COMM_WORLD
    cfg = agree_or_exit(lambda: load_job(args.job, args.set), world)
    data = on_root_or_exit(lambda: task.prepare(cfg), world)
    if world.Get_rank() != 0:
        return 0

    print(f"labels: {' '.join(data.labels)}")
    for split, path in data.paths.items():
        with NerH5Dataset(path) as ds:
            print(f"{split:>5}: {len(ds):>7} sentences, {int(ds.lengths.sum()):>9} sub-tokens -> {path}")
    return 0
