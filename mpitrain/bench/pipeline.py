"""Benchmark: pipeline schedules, mpitrain vs torch.distributed.pipelining.

    mpirun -n P python -m mpitrain bench pipeline [--microbatches M] [--json FILE]

One pipeline of P stages (one per rank) over a stack of identical residual MLP
blocks. For GPipe and 1F1B, mpitrain's engine and torch.distributed.pipelining's
ScheduleGPipe / Schedule1F1B (gloo) train the same stages on the same
micro-batches in the same run, repetitions interleaved so background load hits
all four alike. Reported per (impl, schedule), medians over repetitions:

    step_s           wall time of one step (forward + backward of all micro-batches)
    step_over_ideal  step time / ideal step time (median over repetitions)
    throughput_vs_torch  torch's step time / mpitrain's, same schedule (median over repetitions)
    ideal_s          (m + p - 1) / m * the slowest stage's compute for m micro-batches,
                     measured with all stages computing at once and no communication
    bubble_measured  1 - slowest stage's compute / step time (median over repetitions)
    bubble_ideal     (p - 1) / (m + p - 1)
    peak_activation_bytes  most bytes saved for backward on any stage (one extra step;
                     mpitrain's last stage also counts its loss, torch computes it outside)
"""
from __future__ import annotations

import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from mpitrain.errors import UsageError
from mpitrain.layers import LayerSpec, run_layers

HELP = "pipeline schedules (GPipe, 1F1B) vs torch.distributed.pipelining"


class Block(nn.Module):
    """x + W2 gelu(W1 LayerNorm(x))."""

    def __init__(self, hidden: int, ff: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.up = nn.Linear(hidden, ff)
        self.down = nn.Linear(ff, hidden)

    def forward(self, x):
        return x + self.down(F.gelu(self.up(self.norm(x))))


class SumSquares:
    """Loss for the benchmark: summed squared error against a target."""

    def count(self, targets) -> int:
        return targets.numel()

    def __call__(self, out, targets):
        return F.mse_loss(out, targets, reduction="sum")


class Layers(nn.Module):
    """A stage's layers as one module taking and returning one tensor (for torch)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        return run_layers(self.layers, (x,))


def add_arguments(parser) -> None:
    parser.add_argument("--microbatches", "-m", type=int, default=0,
                        help="micro-batches per step (default 4 x stages)")
    parser.add_argument("--layers", type=int, default=0, help="blocks in the model (default 2 x stages)")
    parser.add_argument("--hidden", type=int, default=256, help="block width")
    parser.add_argument("--batch", type=int, default=4, help="sequences per micro-batch")
    parser.add_argument("--seq", type=int, default=64, help="sequence length")
    parser.add_argument("--reps", type=int, default=11, help="timed repetitions (medians reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    parser.add_argument("--schedules", default="gpipe,1f1b", help="comma-separated: gpipe, 1f1b")
    parser.add_argument("--impls", default="mpitrain,torch", help="comma-separated: mpitrain, torch")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per rank (default: cores / ranks on the node)")
    parser.add_argument("--json", metavar="FILE", help="write result rows as JSON")


def _threads(requested: int) -> int:
    if requested > 0:
        return requested
    local = int(os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or 1)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local))


def _check(args, world_size: int):
    p = world_size
    m = args.microbatches or 4 * p
    layers = args.layers or 2 * p
    if m < p:
        raise UsageError(f"bench pipeline: --microbatches {m} < {p} stages; use at least {p}")
    if layers < p:
        raise UsageError(f"bench pipeline: --layers {layers} < {p} stages; use at least {p}")
    schedules = [s.strip().lower() for s in args.schedules.split(",") if s.strip()]
    impls = [s.strip().lower() for s in args.impls.split(",") if s.strip()]
    for s in schedules:
        if s not in ("gpipe", "1f1b"):
            raise UsageError(f"bench pipeline: --schedules {s!r}; use gpipe and/or 1f1b")
    for i in impls:
        if i not in ("mpitrain", "torch"):
            raise UsageError(f"bench pipeline: --impls {i!r}; use mpitrain and/or torch")
    return p, m, layers, schedules, impls


def _specs(layers: int, hidden: int) -> list[LayerSpec]:
    return [LayerSpec(f"block.{i}", lambda: Block(hidden, 4 * hidden)) for i in range(layers)]


def _data(m: int, args):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m * args.batch, args.seq, args.hidden, generator=g)
    y = torch.randn(m * args.batch, args.seq, args.hidden, generator=g)
    return x, y


def _zero(params) -> None:
    for p in params:
        p.grad = None


class _ComputeRunner:
    """This stage's forward+backward of all micro-batches with no communication.
    Timed in the same round-robin as the pipelines, with every rank computing at
    once, so cores are shared as in a pipeline's steady state."""

    def __init__(self, stage, x_mb, y_mb, loss):
        self.stage, self.loss = stage, loss
        self.x_mb, self.y_mb = x_mb, y_mb
        self.seconds = []

    def step(self):
        inputs = [t.clone().requires_grad_(not self.stage.is_first) for t in self.x_mb]
        t0 = time.perf_counter()
        for i, xi in enumerate(inputs):
            (out,) = self.stage(xi)
            if self.stage.is_last:
                self.loss(out, self.y_mb[i]).backward()
            else:
                out.backward(torch.ones_like(out))
        self.seconds.append(time.perf_counter() - t0)

    def zero(self):
        _zero(self.stage.parameters())


def run(args) -> int:
    from mpi4py import MPI

    from mpitrain.pipeline import PipelineEngine, Stage, partition
    from mpitrain.pipeline.memory import ActivationMeter
    from mpitrain.pipeline.simulate import ideal_bubble

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    p, m, n_layers, schedules, impls = _check(args, comm.Get_size())
    torch.set_num_threads(_threads(args.threads))
    specs = _specs(n_layers, args.hidden)
    part = partition(specs, p, "uniform")
    x, y = _data(m, args)
    x_mb, y_mb = list(x.chunk(m)), list(y.chunk(m))
    loss = SumSquares()
    normalizer = y.numel()

    compute = _ComputeRunner(Stage(specs, part, rank), x_mb, y_mb, loss)
    runners = {("compute", ""): compute}
    for schedule in schedules:
        if "mpitrain" in impls:
            stage = Stage(specs, part, rank)
            engine = PipelineEngine(stage, comm, loss if stage.is_last else None, schedule)
            runners[("mpitrain", schedule)] = _MpitrainRunner(engine, x_mb, y_mb, normalizer)
        if "torch" in impls:
            from mpitrain.bench.pipeline_torch import TorchRunner
            stage = Stage(specs, part, rank)
            runners[("torch", schedule)] = TorchRunner(stage, Layers(stage.layers), schedule, m, x, y,
                                                       normalizer, comm, ActivationMeter)

    times = {key: [] for key in runners}
    keys = list(runners)
    for rep in range(args.warmup + args.reps):
        for key in keys[rep % len(keys):] + keys[:rep % len(keys)]:  # rotate who goes first
            runner = runners[key]
            comm.Barrier()
            t0 = time.perf_counter()
            runner.step()
            comm.Barrier()
            if rep >= args.warmup:
                times[key].append(time.perf_counter() - t0)
            runner.zero()

    del runners[("compute", "")]
    # per repetition: the slowest stage's compute, and the ideal step it allows
    per_rank = comm.allgather(compute.seconds[args.warmup:])
    slowest = [max(col) for col in zip(*per_rank)]
    ideal = [(m + p - 1) / m * c for c in slowest]
    rows = []
    for (impl, schedule), runner in runners.items():
        peak = comm.allgather(runner.peak_memory())
        steps = comm.bcast(times[(impl, schedule)], root=0)
        step = statistics.median(steps)
        row = {"impl": impl, "schedule": schedule, "stages": p, "microbatches": m,
               "step_s": step, "ideal_s": statistics.median(ideal),
               "bubble_measured": statistics.median(1.0 - c / s for c, s in zip(slowest, steps)),
               "bubble_ideal": ideal_bubble(p, m), "peak_activation_bytes": max(peak),
               "peak_activation_bytes_per_stage": peak,
               "stage_compute_s": [statistics.median(c) for c in per_rank],
               "step_over_ideal": statistics.median(s / i for s, i in zip(steps, ideal)),
               "step_s_min": min(steps), "reps": args.reps}
        if impl == "mpitrain":
            in_step = comm.allgather(runner.compute_s[args.warmup:args.warmup + args.reps])
            row["stage_compute_in_step_s"] = [statistics.median(c) for c in in_step]
            row["step_over_ideal_in_step"] = statistics.median(
                s * m / ((m + p - 1) * max(col)) for s, col in zip(steps, zip(*in_step)))
            other = times.get(("torch", schedule))
            if other:
                other = comm.bcast(other, root=0)
                row["throughput_vs_torch"] = statistics.median(o / s for o, s in zip(other, steps))
        rows.append(row)
    for runner in runners.values():
        runner.close()
    if rank == 0:
        print(format_rows(rows, args))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1)
    return 0


class _MpitrainRunner:
    def __init__(self, engine, x_mb, y_mb, normalizer):
        self.engine = engine
        self.batches = [((xi,), yi) for xi, yi in zip(x_mb, y_mb)]
        self.normalizer = normalizer
        self.compute_s = []

    def step(self):
        self.engine.step(self.batches, self.normalizer)
        self.compute_s.append(self.engine.stats.compute_s)

    def zero(self):
        _zero(self.engine.parameters())

    def peak_memory(self) -> int:
        self.engine.track_memory(True)
        self.step()
        self.zero()
        self.engine.track_memory(False)
        return self.engine.stats.peak_activation_bytes

    def close(self):
        pass


def format_rows(rows, args) -> str:
    r0 = rows[0] if rows else {}
    lines = [f"pipeline benchmark: {r0.get('stages')} stages, {r0.get('microbatches')} micro-batches of "
             f"{args.batch} x {args.seq} x {args.hidden}, {args.reps} repetitions (medians); "
             "stage compute s/step: " + ", ".join(f"{c:.4f}" for c in r0.get("stage_compute_s", [])),
             f"{'impl':<9} {'schedule':<8} {'step_s':>8} {'ideal_s':>8} {'step/ideal':>10} "
             f"{'bubble':>7} {'ideal':>6} {'peak act MiB':>12} {'vs torch':>9}"]
    for r in rows:
        vs = f"{r['throughput_vs_torch']:.3f}x" if "throughput_vs_torch" in r else ""
        lines.append(f"{r['impl']:<9} {r['schedule']:<8} {r['step_s']:>8.4f} {r['ideal_s']:>8.4f} "
                     f"{r['step_over_ideal']:>10.3f} {r['bubble_measured']:>7.3f} "
                     f"{r['bubble_ideal']:>6.3f} {r['peak_activation_bytes'] / 2**20:>12.2f} {vs:>9}")
    lines.append("step/ideal and vs torch: medians of per-repetition ratios (torch step / mpitrain step)")
    return "\n".join(lines)
