"""dp x pp pipeline training vs single-process training on the same global batch.

World rank = dp_index * pp + stage (consecutive ranks form one pipeline). For each
schedule: k SGD steps with global gradient clipping, then every rank compares its
stage's parameters with the single-process reference by global name. Prints
"PIPE-OK ..." per rank and schedule, or exits non-zero.
"""
import argparse
import sys
from contextlib import contextmanager

import numpy as np
import torch
from mpi4py import MPI

from pipe_model import SGD, TIED, TokenLoss, microbatches, model_specs, reference_train, sequences

from mpitrain.pipeline import PipelineEngine, Stage, plan_partition, reduce_metrics


class NoSyncCheck:
    """Wraps a gradient averager and checks the engine's contract: in each step every
    backward but the last runs inside `no_sync`."""

    def __init__(self, inner, named_params):
        self.inner = inner
        self.in_no_sync = False
        self.backwards = []  # per backward through the first parameter: inside no_sync?
        named_params[0][1].register_post_accumulate_grad_hook(
            lambda p: self.backwards.append(self.in_no_sync))

    @contextmanager
    def no_sync(self):
        self.in_no_sync = True
        try:
            with self.inner.no_sync():
                yield
        finally:
            self.in_no_sync = False

    def wait(self):
        if not self.backwards or self.backwards[-1] or not all(self.backwards[:-1]):
            raise AssertionError(f"no_sync per backward {self.backwards}: want all but the last")
        self.backwards.clear()
        self.inner.wait()


def make_averager(named, comm):
    from mpitrain.dp.grad_sync import GradientAverager

    return NoSyncCheck(GradientAverager(named, comm, algorithm="ring"), named)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dp", type=int, default=1)
    ap.add_argument("--schedules", default="gpipe,1f1b")
    ap.add_argument("--partition", default="uniform")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--max-norm", type=float, default=0.5)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--grad-scale", type=float, default=0.0, help="grad_scale (default: dp)")
    ap.add_argument("--negative", action="store_true",
                    help="also train with grad_scale 1 (wrong when dp > 1) and require a mismatch")
    args = ap.parse_args()
    torch.set_num_threads(1)

    world = MPI.COMM_WORLD
    rank, size, dp = world.Get_rank(), world.Get_size(), args.dp
    pp = size // dp
    replica, stage_index = divmod(rank, pp)
    pp_comm = world.Split(color=replica, key=stage_index)
    dp_comm = world.Split(color=stage_index, key=replica)
    method = args.partition
    if method.startswith("cuts:"):
        method = [int(c) for c in method[5:].split("/")]
    specs = model_specs()
    part = plan_partition(specs, pp, method, comm=world)
    if rank == 0:
        print(part.plan())

    ref, ref_losses = reference_train(args.steps, args.global_batch, args.lr, args.max_norm,
                                      tied=args.tied)
    ctx = dict(args=args, specs=specs, part=part, world=world, pp_comm=pp_comm, dp_comm=dp_comm,
               replica=replica, stage_index=stage_index, ref=ref, ref_losses=ref_losses)
    failures = 0
    for schedule in args.schedules.split(","):
        failures += train(schedule, args.grad_scale or dp, **ctx)
    failures = world.allreduce(failures)
    if args.negative:
        # dp replicas average their gradients, so grad_scale must be dp: 1 must be caught
        caught = world.allreduce(train("1f1b", 1.0, quiet=True, **ctx))
        if rank == 0:
            print("PIPE-NEGATIVE-DETECTED" if caught else "PIPE-NEGATIVE-MISSED", flush=True)
        failures += 0 if caught else 1
    sys.exit(1 if failures else 0)


def train(schedule, grad_scale, args, specs, part, world, pp_comm, dp_comm, replica, stage_index,
          ref, ref_losses, quiet=False) -> int:
    """Train `args.steps` steps with one schedule; return the number of mismatches."""
    rank, dp = world.Get_rank(), dp_comm.Get_size()
    per_replica = args.global_batch // dp
    stage = Stage(specs, part, stage_index, seed=0)
    named = list(stage.global_named_parameters())
    sync = make_averager(named, dp_comm) if dp > 1 else None
    engine = PipelineEngine(stage, pp_comm, TokenLoss() if stage.is_last else None, schedule,
                            grad_sync=sync, grad_scale=grad_scale, tied=TIED if args.tied else (),
                            partition=part, track_memory=True)
    opt = SGD(engine.parameters(), lr=args.lr, momentum=0.9)
    losses = []
    for step in range(args.steps):
        seqs = sequences(step, args.global_batch)
        normalizer = sum(len(y) for _, y in seqs)
        mine = seqs[replica * per_replica:(replica + 1) * per_replica]
        opt.zero_grad()
        result = engine.step(microbatches(mine, args.microbatches), normalizer)
        engine.clip_grad_norm_(args.max_norm)
        opt.step()
        metrics = reduce_metrics(result, world)
        if rank == 0:
            losses.append(metrics["loss"])
    mismatches, worst = 0, 0.0
    for name, p in named:
        diff = float((p.detach() - ref[name]).abs().max())
        worst = max(worst, diff)
        if diff > args.tol:
            mismatches += 1
            if not quiet:
                print(f"PIPE-MISMATCH rank {rank} {schedule} {name}: max diff {diff:.3e}", flush=True)
    if rank == 0 and not np.allclose(losses, ref_losses, rtol=1e-5, atol=1e-6):
        mismatches += 1
        if not quiet:
            print(f"PIPE-MISMATCH losses {losses} vs reference {ref_losses}", flush=True)
    if not quiet:
        print(f"PIPE-OK rank {rank} stage {stage_index} replica {replica} {schedule} "
              f"params {len(named)} max_diff {worst:.2e} peak_bytes {engine.stats.peak_activation_bytes}",
              flush=True)
    return mismatches


if __name__ == "__main__":
    main()
