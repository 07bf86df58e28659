"""Benchmark: GPT training tokens/s, mpitrain on the job's layout (e.g. dp = 2)
against a plain single-process PyTorch loop of the same model and data.

    mpirun -n 2 python -m mpitrain bench gpt [JOB.toml] [--steps 20] [--reps 3] [--set ...]

The job (default jobs/gpt_tiny.toml) is prepared once. Then, in alternating
blocks so background load hits both alike:
  * mpitrain: `--steps` optimizer steps of the Trainer on every rank (one thread
    per rank when ranks share the cores);
  * plain: world rank 0 alone runs the same model (tied weights as one parameter,
    same initial weights) on the same global batches with AdamW and clipping,
    using every core of the ranks on its node (`torch.set_num_threads`), while the
    other ranks sleep.
Reported: tokens/s of each (median over blocks) and their ratio (target >= 1.0).
"""
from __future__ import annotations

import json
import statistics
import time

import torch

HELP = "GPT training tokens/s: mpitrain (job layout) vs a plain single-process PyTorch loop"


def add_arguments(parser) -> None:
    from ..runtime import add_job_arguments

    add_job_arguments(parser, job_required=False)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per block")
    parser.add_argument("--reps", type=int, default=3, help="alternating blocks per side")
    parser.add_argument("--json", default="", help="also write the results to this file")


class PlainLoop:
    """The same model and batches in one process, the textbook PyTorch loop."""

    def __init__(self, trainer):
        from ..data.sharding import epoch_indices
        from ..train.optim import make_optimizer
        from ..train.reference import SingleProcessModel

        cfg, t = trainer.cfg, trainer.cfg.train
        self.spec, self.max_norm = trainer.spec, t.max_grad_norm
        self.model = SingleProcessModel(trainer.spec, cfg.job.seed)
        self.params = [p for _, p in self.model.global_named_parameters()]
        self.optimizer = make_optimizer(self.model.global_named_parameters(), t)
        self.data = trainer.train_set
        self.steps = epoch_indices(len(self.data), 0, cfg.job.seed, 0, 1, t.global_batch, t.tail)
        self.position = 0

    def run(self, n: int) -> tuple[int, float]:
        """(tokens, seconds) of n steps."""
        tokens, start = 0, time.perf_counter()
        for _ in range(n):
            batch = self.data.batch(self.steps[self.position % len(self.steps)])
            self.position += 1
            loss = self.spec.loss(self.model(*batch[0]), batch[1]) / batch[2]
            loss.backward()
            if self.max_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
            tokens += batch[2]
        return tokens, time.perf_counter() - start


def run(args) -> int:
    from ..bench.allreduce import idle_barrier
    from ..runtime import start_job
    from ..train.loop import run_epoch
    from ..train.trainer import Trainer

    if args.job is None:
        args.job = "jobs/gpt_tiny.toml"
    trainer = Trainer(started=start_job(args))
    topo, log = trainer.topo, trainer.log
    mpi_threads = torch.get_num_threads()
    plain = None
    if topo.rank == 0:
        plain = PlainLoop(trainer)
    ours, theirs = [], []
    position = 0
    for rep in range(args.reps + 1):  # block 0 warms both up
        topo.world.Barrier()
        start = time.perf_counter()
        done = tokens = 0
        while done < args.steps:
            epoch, at = divmod(position, trainer.steps_per_epoch)
            result = run_epoch(trainer, epoch, start=at, stop=min(trainer.steps_per_epoch, at + args.steps - done))
            done += result.steps
            position += result.steps
            tokens += result.tokens
        seconds = topo.world.allreduce(time.perf_counter() - start, op=_max())
        if rep:
            ours.append(tokens / seconds)
        if topo.rank == 0:
            torch.set_num_threads(mpi_threads * topo.node_size)
            got, secs = plain.run(args.steps)
            torch.set_num_threads(mpi_threads)
            if rep:
                theirs.append(got / secs)
        idle_barrier(topo.world)
    if topo.rank == 0:
        g = topo.grid
        row = {"layout": f"dp {g.dp} x pp {g.pp}", "ranks": topo.size, "steps": args.steps, "reps": args.reps,
               "mpitrain_tokens_per_s": statistics.median(ours),
               "plain_tokens_per_s": statistics.median(theirs),
               "plain_threads": mpi_threads * topo.node_size}
        row["ratio"] = row["mpitrain_tokens_per_s"] / row["plain_tokens_per_s"]
        log.info(f"GPT training, {row['layout']} ({row['ranks']} ranks, {mpi_threads} thread(s) each) vs "
                 f"plain PyTorch (1 process, {row['plain_threads']} threads), median of {args.reps} blocks "
                 f"of {args.steps} steps:")
        log.info(f"  mpitrain {row['mpitrain_tokens_per_s']:,.0f} tokens/s, plain {row['plain_tokens_per_s']:,.0f} "
                 f"tokens/s, ratio {row['ratio']:.2f}x")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(row, f, indent=2)
    trainer.close()
    return 0


def _max():
    from mpi4py import MPI

    return MPI.MAX
