"""Pipeline parallelism: a model as an ordered list of layers, cut into stages (one
per rank of a pipeline group), trained in micro-batches with GPipe or 1F1B.

    partition    which layers each stage owns (uniform / parameters / profile / cut points)
    stage        build one stage's layers, global parameter names
    schedule     schedules as plain data: per stage, an ordered list of actions
    simulate     replay all stages' lists together: deadlock check, bubble
    engine       run one stage's list: forward/backward, point-to-point, loss
    clip         global gradient-norm clipping across stages
    tied         weights shared across stages (gradients summed over the owners)

Tied weights are supported when declared (``PipelineEngine(tied=[("embed.weight",
"head.weight")], partition=...)``); one parameter object reached from layers on
different stages is refused (`check_shared_parameters`).
"""
from .clip import clip_grad_norm_, global_grad_norm
from .partition import Partition, partition, plan_partition
from .schedule import Action, format_schedule, get_schedule, gpipe, one_f_one_b
from .simulate import DeadlockError, ScheduleError, ideal_bubble, replay
from .stage import Stage, StageError, check_shared_parameters

_ENGINE = ("PipelineEngine", "StepStats", "reduce_metrics")

__all__ = [
    "Action", "DeadlockError", "Partition", "PipelineEngine", "ScheduleError", "Stage", "StageError",
    "StepStats", "check_shared_parameters", "clip_grad_norm_", "format_schedule", "get_schedule",
    "global_grad_norm", "gpipe", "ideal_bubble", "one_f_one_b", "partition", "plan_partition",
    "reduce_metrics", "replay",
]


def __getattr__(name):
    # The engine imports mpi4py (via mpitrain.comm); load it on first use so that
    # schedules, the simulator and partitioning work without MPI.
    if name in _ENGINE:
        from . import engine
        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
