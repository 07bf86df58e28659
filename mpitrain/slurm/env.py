"""What the Slurm allocation says about this process, and the check that MPI
sees the tasks Slurm started (a missing PMI makes every task a 1-rank world)."""
from __future__ import annotations

import os

from ..errors import UsageError


def in_allocation(env=os.environ) -> bool:
    return "SLURM_JOB_ID" in env


def check_world(world_size: int, env=os.environ) -> None:
    """Inside an allocation, tasks that each see an MPI world of one rank mean a
    launcher without PMI (with mpirun inside the allocation, Slurm's task count
    describes mpirun's own helpers, so only this case is certain)."""
    ntasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
    if not in_allocation(env) or not ntasks or int(ntasks) <= 1 or world_size > 1:
        return
    raise UsageError(f"Slurm started {ntasks} tasks but MPI sees a world of {world_size} rank(s): the launcher "
                     "did not wire up PMI, so each task would train alone; launch with `srun --mpi=pmi2` (or "
                     "pmix, whichever your MPI supports: `srun --mpi=list`) or with `mpirun` inside the allocation")


def requeue_id(env=os.environ) -> str | None:
    """The id `scontrol requeue` takes: ARRAYJOB_TASK for an array task, else the job id."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def restart_count(env=os.environ) -> int:
    return int(env.get("SLURM_RESTART_COUNT") or 0)


def continues_a_run(env=os.environ) -> bool:
    """A requeued job, or a follow-up job (`submit --follow-ups`): it continues the
    run it belongs to, and does nothing if that run has finished."""
    return in_allocation(env) and (restart_count(env) > 0 or bool(env.get("MPITRAIN_FOLLOW_UP")))
