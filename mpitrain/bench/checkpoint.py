"""Benchmark: checkpoint size, save and load times, and the time training is
held, against `torch.save` / `torch.load` of the same state on one process.

    mpirun -n 2 python -m mpitrain bench checkpoint JOB.toml [--set grid.pp=2] [--reps 3] [--steps 6]

The job trains a few steps (so the optimizer has state), then, repeated:
  * mpitrain: a checkpoint of every rank (background writing, fsync, manifest,
    commit); `held` is the time training is blocked (copying to host memory),
    `save` the time until the checkpoint is committed; `load` reads it back on
    every rank (checksums verified);
  * torch: the same tensors (model and optimizer state, gathered to rank 0
    outside the timing) written by `torch.save` + fsync and read by
    `torch.load(weights_only=True)` on rank 0, the other ranks sleeping;
  * the cost of writing in the background: `--steps` training steps while a
    save is written, against the same steps without one.
Medians are reported, and ratios against torch.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

HELP = "checkpoint save/load/held time and size vs torch.save/torch.load"


def add_arguments(parser) -> None:
    from ..runtime import add_job_arguments

    add_job_arguments(parser)
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each measurement")
    parser.add_argument("--steps", type=int, default=6, help="training steps timed with and without a save")
    parser.add_argument("--dir", default="", help="where to write (default: a temporary directory)")
    parser.add_argument("--json", default="", help="also write the results to this file")


def gathered_state(trainer) -> dict | None:
    """Model and optimizer state of the whole model on rank 0, with logical shapes
    (collective)."""
    from ..train.state import optimizer_state

    model = trainer.model.gather_state(root=0)
    topo, mine = trainer.topo, None
    if topo.coords.dp == 0:
        params = dict(trainer.model.named_parameters())
        mine = optimizer_state(trainer.optimizer, params.items())["state"]
        mine = {n: {k: v.cpu() for k, v in s.items()} for n, s in mine.items()}
        splits = trainer.model.splits()
        for name in sorted(mine):  # per-element state of a split parameter: joined over the tensor group
            for key in sorted(mine[name]):
                split, value = splits.get(name), mine[name][key]
                if split is not None and value.shape == params[name].shape:
                    mine[name][key] = split.join(topo.tp_comm.allgather(value))
        if topo.coords.tp != 0:
            mine = None
    parts = topo.world.gather(mine, root=0)
    if topo.rank != 0:
        return None
    optim = {}
    for part in parts:
        optim.update(part or {})
    return {"model": model, "optimizer": optim}


def timed_steps(trainer, position: list, n: int) -> float:
    from ..train.loop import run_epoch

    trainer.topo.world.Barrier()
    start = time.perf_counter()
    done = 0
    while done < n:
        epoch, at = divmod(position[0], trainer.steps_per_epoch)
        result = run_epoch(trainer, epoch, start=at, stop=min(trainer.steps_per_epoch, at + n - done))
        done += result.steps
        position[0] += result.steps
    return trainer.topo.world.allreduce(time.perf_counter() - start, op=_max())


def run(args) -> int:
    from ..bench.allreduce import idle_barrier
    from ..checkpoint.load import load_into
    from ..checkpoint.manifest import latest
    from ..checkpoint.save import CheckpointSaver
    from ..runtime import start_job
    from ..train.trainer import Trainer

    trainer = Trainer(started=start_job(args), training=False)
    topo, log, world = trainer.topo, trainer.log, trainer.topo.world
    base = Path(args.dir or tempfile.mkdtemp(prefix="mpitrain-bench-ckpt-"))
    base = Path(world.bcast(str(base), root=0))
    position = [0]
    timed_steps(trainer, position, 2)  # the optimizer gets its state
    saver = CheckpointSaver(trainer, base / "mpitrain", keep=1, background=True)
    held, save_s, load_s, plain, overlapped = [], [], [], [], []
    for _ in range(args.reps):
        world.Barrier()
        start = time.perf_counter()
        saver.save()
        held.append(world.allreduce(time.perf_counter() - start, op=_max()))
        saver.finish()
        save_s.append(world.allreduce(time.perf_counter() - start, op=_max()))
        world.Barrier()
        start = time.perf_counter()
        load_into(trainer, latest(base / "mpitrain"))
        load_s.append(world.allreduce(time.perf_counter() - start, op=_max()))
        plain.append(timed_steps(trainer, position, args.steps))
        saver.save()
        overlapped.append(timed_steps(trainer, position, args.steps))
        saver.finish()
    ckpt = latest(base / "mpitrain")
    size = sum(p.stat().st_size for p in ckpt.iterdir()) if topo.rank == 0 else 0
    state = gathered_state(trainer)
    torch_save, torch_load = [], []
    if topo.rank == 0:
        path = base / "torch.pt"
        for _ in range(args.reps):
            start = time.perf_counter()
            with open(path, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            torch_save.append(time.perf_counter() - start)
            start = time.perf_counter()
            torch.load(path, weights_only=True)
            torch_load.append(time.perf_counter() - start)
        torch_size = path.stat().st_size
    idle_barrier(world)
    if topo.rank == 0:
        med = statistics.median
        g = topo.grid
        step_s = med(plain) / args.steps
        row = {"layout": f"dp {g.dp} x pp {g.pp} x tp {g.tp}", "size_mib": size / 2**20,
               "torch_size_mib": torch_size / 2**20,
               "save_s": med(save_s), "held_s": med(held), "load_s": med(load_s),
               "torch_save_s": med(torch_save), "torch_load_s": med(torch_load),
               "save_throughput_vs_torch": (size / med(save_s)) / (torch_size / med(torch_save)),
               "held_vs_torch_save": med(held) / med(torch_save),
               "load_vs_torch_load": med(load_s) / med(torch_load),
               "step_s": step_s, "background_cost_s": med(overlapped) - med(plain),
               "epoch_s": step_s * trainer.steps_per_epoch}
        row["epoch_cost_fraction"] = (row["held_s"] + max(0.0, row["background_cost_s"])) / row["epoch_s"]
        log.info(f"checkpoint, {row['layout']}: {row['size_mib']:.1f} MiB (torch.save file {row['torch_size_mib']:.1f} MiB)")
        log.info(f"  save {row['save_s']:.2f} s (torch.save+fsync {row['torch_save_s']:.2f} s): throughput "
                 f"{row['save_throughput_vs_torch']:.2f}x torch")
        log.info(f"  training held {row['held_s'] * 1e3:.0f} ms = {row['held_vs_torch_save']:.3f}x torch.save's time")
        log.info(f"  load {row['load_s']:.2f} s (torch.load {row['torch_load_s']:.2f} s) = {row['load_vs_torch_load']:.2f}x")
        log.info(f"  {args.steps} steps: {med(plain):.2f} s alone, {med(overlapped):.2f} s while a save is written; "
                 f"one save per epoch ({trainer.steps_per_epoch} steps, ~{row['epoch_s']:.0f} s) costs "
                 f"{100 * row['epoch_cost_fraction']:.2f}% of it")
        if args.json:
            Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    trainer.close()
    return 0


def _max():
    from mpi4py import MPI

    return MPI.MAX
