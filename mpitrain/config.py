"""Typed job configuration: one dataclass per TOML section.

The generic sections live here: [job], [grid], [runtime], [comm], [pipeline] and
[train]. A task adds its own sections (typically [model] and [data]) as
dataclasses of the same kind (`Task.sections`). Each field's metadata may carry
`choices`, `min`/`max` and `help`; the loader in `jobfile.py` validates a TOML
file against these classes, so a new key is added once and is then checked,
overridable with `--set` and documented by `python -m mpitrain keys`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .grid import Grid


def opt(default, help: str, **checks):
    """A config field with its documentation and checks."""
    kw = {"default_factory": (lambda d=default: list(d))} if isinstance(default, list) else {"default": default}
    return field(metadata={"help": help, **checks}, **kw)


@dataclass
class JobSection:
    name: str = opt("job", "run name; the run directory defaults to runs/NAME")
    seed: int = opt(0, "seed for initialisation, shuffling and dropout", min=0)
    run_dir: str = opt("", "where metrics, logs and exports go (default runs/NAME)")
    task: str = opt("ner", "built-in task (ner, gpt), or your own: 'package.module:factory' or "
                           "'path/to/file.py:factory' (relative to the job file)")


@dataclass
class GridSection:
    dp: int = opt(1, "data-parallel replicas", min=1)
    pp: int = opt(1, "pipeline stages", min=1)
    tp: int = opt(1, "tensor-parallel shards: each layer's weight matrices split over tp ranks", min=1)

    def grid(self) -> Grid:
        return Grid(self.dp, self.pp, self.tp)


@dataclass
class RuntimeSection:
    device: str = opt("auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda"))
    threads: int = opt(0, "torch CPU threads per rank; 0 = cores on node // ranks on node", min=0)
    verbose: bool = opt(False, "let every rank log, not only rank 0")
    rank_logs: bool = opt(False, "also write each rank's log to RUN_DIR/logs/rank-N.log")
    stall_timeout: float = opt(0.0, "seconds a rank may wait on MPI before the job is ended as stalled "
                                    "(exit code 77); 0 = calibrated: max(30 s, 10x the slowest of the first "
                                    "steps), 300 s until then", min=0.0)
    trace_steps: int = opt(0, "write RUN_DIR/trace.json (Chrome trace, one track per rank) of this many "
                              "steps after the first two; 0 = off", min=0)
    check_collectives: bool = opt(False, "debug: compare (operation, size, dtype) across the group before "
                                         "every collective; a mismatch ends the job at once naming both")


@dataclass
class CommSection:
    algorithm: str = opt("auto", "gradient all-reduce: shm (shared memory in a node, hierarchical across "
                                 "nodes) | ring | mpi | auto (MPI below the crossover, shm where replicas "
                                 "share nodes or else ring above it)", choices=("shm", "ring", "mpi", "auto"))
    crossover_bytes: int = opt(0, "auto: shm or ring above this size, MPI below; 0 = measure at start", min=0)
    bucket_mb: float = opt(25.0, "gradient bucket size in MiB", min=0.001)
    first_bucket_mb: float = opt(1.0, "size of the first (earliest launched) bucket in MiB", min=0.001)
    compress: str = opt("none", "wire format for gradients: none | fp16 | bf16",
                        choices=("none", "fp16", "bf16"))
    zero: int = opt(0, "1 = ZeRO-1: gradients are reduce-scattered and each data-parallel replica keeps "
                       "and steps the optimizer state of its 1/dp of every bucket, then the updated "
                       "parameters are all-gathered; 0 = every replica steps a whole optimizer (with "
                       "dp = 1 both are the same)", choices=(0, 1))


@dataclass
class PipelineSection:
    schedule: str = opt("1f1b", "gpipe | 1f1b", choices=("gpipe", "1f1b"))
    microbatches: int = opt(0, "micro-batches per replica per step; 0 = 2 x stages (1 if pp = 1)", min=0)
    partition: str = opt("parameters", "uniform | parameters | profile | cuts",
                         choices=("uniform", "parameters", "profile", "cuts"))
    cuts: list = opt([], "with partition = 'cuts': index of the first layer of stages 1..pp-1")
    recompute: bool = opt(False, "activation recomputation: keep only each layer's inputs for backward and "
                                 "run its forward again there (less activation memory, about one more "
                                 "forward of compute); same gradients")


@dataclass
class TrainSection:
    epochs: int = opt(1, "passes over the train split", min=1)
    max_steps: int = opt(0, "stop after this many optimizer steps in all (0 = run every epoch)", min=0)
    global_batch: int = opt(32, "samples per optimizer step, over all replicas", min=1)
    eval_batch: int = opt(64, "samples per evaluation batch, over all replicas", min=1)
    optimizer: str = opt("adamw", "adamw | sgd", choices=("adamw", "sgd"))
    lr: float = opt(5e-5, "peak learning rate", min=0.0)
    weight_decay: float = opt(0.01, "weight decay (not on biases and normalisation scales)", min=0.0)
    betas: list = opt([0.9, 0.999], "adamw: (beta1, beta2)")
    eps: float = opt(1e-8, "adamw: denominator epsilon", min=0.0)
    momentum: float = opt(0.0, "sgd: momentum", min=0.0, max=1.0)
    schedule: str = opt("linear", "learning rate after warm-up: linear (to 0) | cosine (to 0) | constant",
                        choices=("linear", "cosine", "constant"))
    warmup: float = opt(0.0, "fraction of steps with linear warm-up", min=0.0, max=1.0)
    max_grad_norm: float = opt(1.0, "global gradient-norm clip; 0 = off", min=0.0)
    dropout: str = opt("invariant", "dropout masks: invariant (a function of seed, step, layer, sample and "
                                    "position: every layout trains like one process) | torch (torch's RNG; "
                                    "faster, differs by layout)", choices=("invariant", "torch"))
    nonfinite: str = opt("stop", "a NaN or infinite loss or gradient norm on any rank: stop (exit code 78, the "
                                 "last good checkpoint kept) | skip (that step, on every rank)",
                         choices=("stop", "skip"))
    log_every: int = opt(50, "log loss, lr, gradient norm and throughput every N steps", min=1)
    tail: str = opt("drop", "last partial global batch of an epoch: drop | pad", choices=("drop", "pad"))
    precision: str = opt("fp32", "training compute: fp32 | bf16 (autocast to bfloat16, CPU or CUDA) | fp16 "
                                 "(autocast to float16 with dynamic loss scaling; CUDA only). Parameters, "
                                 "gradients and optimizer state stay fp32, and so does evaluation; gradients "
                                 "are reduced in fp32 (or bf16/fp16 on the wire: [comm] compress)",
                         choices=("fp32", "bf16", "fp16"))
    loss_scale_init: float = opt(65536.0, "fp16: initial loss scale (halved after a step with inf/NaN "
                                          "gradients, which is skipped on every rank)", min=1.0)
    loss_scale_growth_interval: int = opt(2000, "fp16: double the loss scale after this many steps without "
                                                "inf/NaN gradients", min=1)


@dataclass
class CheckpointSection:
    dir: str = opt("", "where checkpoints go (default RUN_DIR/checkpoints)")
    every_steps: int = opt(0, "save every N optimizer steps (0 = not by steps)", min=0)
    every_epoch: bool = opt(True, "save at the end of every epoch")
    keep: int = opt(2, "keep the newest N checkpoints", min=1)
    best_metric: str = opt("", "also keep the best checkpoint by this dev metric (e.g. 'f1', 'loss')")
    best_mode: str = opt("max", "whether the best metric is the largest or the smallest: max | min",
                         choices=("max", "min"))
    resume: str = opt("auto", "auto (continue an unfinished run of this job from its newest valid "
                              "checkpoint) | never | the path of a checkpoint to start from")
    background: bool = opt(True, "write in a background thread; training is held only while the state "
                                 "is copied to host memory")


@dataclass
class SlurmSection:
    max_requeues: int = opt(5, "requeues for the time limit at most (preemptions are not capped)", min=0)
    requeue: bool = opt(True, "on the time-limit warning (SIGUSR2): checkpoint, then requeue the job")


GENERIC_SECTIONS = ("job", "grid", "runtime", "comm", "pipeline", "train", "checkpoint", "slurm")


@dataclass
class JobConfig:
    """The generic sections as attributes; a task's own sections are reachable the
    same way (`cfg.model`, `cfg.data`) through `task_sections`."""
    job: JobSection = field(default_factory=JobSection)
    grid: GridSection = field(default_factory=GridSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    comm: CommSection = field(default_factory=CommSection)
    pipeline: PipelineSection = field(default_factory=PipelineSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    slurm: SlurmSection = field(default_factory=SlurmSection)
    task_sections: dict = field(default_factory=dict)  # name -> dataclass instance
    source: str = "<defaults>"  # the file it came from, for messages
    base_dir: str = "."         # where relative task paths are resolved (the job file's folder)

    def __getattr__(self, name):
        sections = self.__dict__.get("task_sections") or {}
        if name in sections:
            return sections[name]
        raise AttributeError(f"job configuration has no section [{name}]")

    @property
    def run_dir(self) -> str:
        return self.job.run_dir or f"runs/{self.job.name}"

    def section(self, name: str):
        return getattr(self, name)

    def to_dict(self) -> dict:
        """Every section as plain data (e.g. to record with a run)."""
        out = {name: asdict(getattr(self, name)) for name in GENERIC_SECTIONS}
        out.update({name: asdict(obj) for name, obj in self.task_sections.items()})
        return out


def section_classes(task_sections: dict | None = None) -> dict[str, type]:
    """Section name -> dataclass, in file order: the generic ones, then the task's."""
    classes = {f.name: f.default_factory for f in fields(JobConfig) if f.name in GENERIC_SECTIONS}
    classes.update(task_sections or {})
    return classes
