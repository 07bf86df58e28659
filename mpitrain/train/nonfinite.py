"""A non-finite loss or gradient norm: agreed across every rank, then the job
stops (`train.nonfinite = "stop"`, exit code 78, naming the step; the last good
checkpoint is kept) or every rank skips that optimizer step ("skip")."""
from __future__ import annotations

import math
import os
import sys

EXIT_NONFINITE = 78


def step_is_bad(topo, result, grad_norm) -> bool:
    """Whether the loss (on last stages) or the gradient norm is NaN or infinite on
    any rank (collective over the world)."""
    from mpi4py import MPI

    local = (result is not None and not math.isfinite(result[0])) or \
        (grad_norm is not None and not math.isfinite(grad_norm))
    return bool(topo.world.allreduce(int(local), op=MPI.MAX))


def stop(trainer, epoch: int, position: int) -> None:
    """End every rank cleanly: a checkpoint still being written (of an earlier, good
    step) is committed first, nothing newer is saved."""
    if trainer.saver is not None:
        trainer.saver.finish()
    if trainer.topo.rank == 0:
        from ..checkpoint.manifest import latest

        kept = latest(trainer.checkpoint_root)
        sys.stderr.write(
            f"mpitrain: error: non-finite loss or gradient norm at step {trainer.step + 1} (epoch {epoch + 1}, "
            f"step {position + 1} of it); training stopped; last good checkpoint: "
            f"{kept if kept else '(none)'}; lower train.lr, raise train.warmup or set train.nonfinite = \"skip\"\n")
        sys.stderr.flush()
    trainer.topo.world.Barrier()
    sys.stdout.flush()
    from mpi4py import MPI

    MPI.Finalize()
    os._exit(EXIT_NONFINITE)
