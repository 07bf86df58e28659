"""Stopping for a signal: the time-limit warning, SIGTERM or SIGINT reached some
rank (agreed at a step boundary); every rank writes a committed checkpoint, for
the warning rank 0 requeues the Slurm job (up to slurm.max_requeues times),
then all ranks exit with EXIT_REQUEUED (75) or EXIT_STOPPED (76)."""
from __future__ import annotations

import os
import sys

from ..checkpoint.manifest import checkpoint_name
from ..checkpoint.save import CheckpointSaver
from ..slurm import env as slurm_env
from ..slurm.requeue import requeue
from ..slurm.stop import EXIT_REQUEUED, EXIT_STOPPED, NAMES, WARNED
from .run_dir import count_time_requeue


def stop_for_signal(trainer, got: int) -> None:
    cfg, log, world = trainer.cfg, trainer.log, trainer.topo.world
    ck = cfg.checkpoint
    saver = trainer.saver or CheckpointSaver(trainer, trainer.checkpoint_root, keep=ck.keep, background=False)
    saver.save()
    saver.finish()
    code = EXIT_STOPPED
    if trainer.topo.rank == 0:
        log.info(f"{NAMES[got]} at step {trainer.step}: checkpoint "
                 f"{trainer.checkpoint_root / checkpoint_name(trainer.step)} committed")
        if got == WARNED and cfg.slurm.requeue and slurm_env.in_allocation():
            if count_time_requeue(trainer.run_dir, cfg.slurm.max_requeues):
                code = EXIT_REQUEUED
            else:
                log.info(f"not requeued: {cfg.slurm.max_requeues} time-limit requeues made "
                         "([slurm] max_requeues)")
    code = world.bcast(code, root=0)
    trainer.stop.uninstall()
    world.Barrier()
    sys.stdout.flush()
    from mpi4py import MPI

    MPI.Finalize()  # every rank is done with MPI before Slurm ends this incarnation
    if code == EXIT_REQUEUED and trainer.topo.rank == 0 and not requeue(log):
        code = EXIT_STOPPED
    sys.stdout.flush()
    os._exit(code)
