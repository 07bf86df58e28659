"""One epoch of training: sharded global batches through the parallel model,
optimizer and schedule steps, and a metrics line every `train.log_every` steps."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..comm import waits
from ..data.sharding import epoch_indices
from ..log import progress
from ..timing import TIMER
from . import nonfinite, precision
from .breakdown import Breakdown
from .breakdown import summary as breakdown_summary
from .parallel import split_microbatches


@dataclass
class EpochResult:
    epoch: int                  # 1-based
    loss: float | None          # mean train loss per loss term (rank 0 only)
    tokens: int                 # tokens processed by this call, all replicas
    seconds: float
    steps: int


class Sums:
    """Loss and loss terms (last stages) and tokens since `start`: of a logging
    window, or of an epoch (`Trainer.epoch_totals`, saved with checkpoints)."""

    def __init__(self):
        self.restore(0.0, 0, 0)

    def restore(self, loss: float, count: int, tokens: int) -> None:
        self.loss, self.count, self.tokens = loss, count, tokens
        self.start = time.perf_counter()

    def add(self, result, tokens: int) -> None:
        self.tokens += tokens
        if result is not None:
            self.loss += result[0]
            self.count += result[1]


def reduce_loss(topo, loss_sum: float, count: int) -> float | None:
    """Mean loss over every last stage's terms, on world rank 0 (None elsewhere)."""
    from mpi4py import MPI

    total = topo.world.reduce(np.array([loss_sum, count], dtype=np.float64), op=MPI.SUM, root=0)
    if topo.rank != 0:
        return None
    return float(total[0] / total[1]) if total[1] else float("nan")


def run_epoch(trainer, epoch: int, start: int = 0, stop: int | None = None) -> EpochResult:
    """Train steps [start, stop) of `epoch` (0-based; stop None = to the end);
    stops early at `train.max_steps`."""
    cfg, topo, model, t = trainer.cfg, trainer.topo, trainer.model, trainer.cfg.train
    shard = epoch_indices(len(trainer.train_set), epoch, cfg.job.seed, topo.coords.dp, topo.grid.dp,
                          t.global_batch, t.tail)
    total, window = trainer.epoch_totals, Sums()
    if start == 0:
        total.restore(0.0, 0, 0)
    total.start, tokens_before = time.perf_counter(), total.tokens
    steps = 0
    times = Breakdown()
    TIMER.take()  # what came before this epoch (evaluation, checkpoints) is no step's
    bar = progress(total=len(shard), initial=start, rank=topo.rank, desc=f"epoch {epoch + 1}", unit="step")
    for i in range(start, len(shard) if stop is None else min(stop, len(shard))):
        if trainer.done:
            break
        step_start = time.perf_counter()
        if trainer.tracer is not None:
            trainer.tracer.before_step(trainer.step)
        with TIMER.span("step", f"step {trainer.step + 1}"):
            with TIMER.span("data", "micro-batches"):
                parts = split_microbatches(shard[i], trainer.microbatches)
                batches = [trainer.train_set.batch(p) for p in parts]
                local = np.array([sum(b[2] for b in batches), sum(b[3] if len(b) > 3 and b[3] is not None
                                                                  else b[2] for b in batches)], dtype=np.int64)
                normalizer, step_tokens = (topo.dp_comm.allreduce(local) if topo.grid.dp > 1 else local).tolist()
            with waits.where(f"step {trainer.step + 1}"):
                result = model.train_step([(b[0], b[1]) for b in batches], max(1, normalizer), samples=parts,
                                          step=trainer.step)
            lr = trainer.scheduler.get_last_lr()[0]
            with TIMER.span("optimizer", "clip, non-finite check, optimizer step"):
                grad_norm, result = optimizer_step(trainer, result, epoch, i)
        log_now = (trainer.step + 1) % t.log_every == 0
        trainer.step += 1
        trainer.step_in_epoch = i + 1
        steps += 1
        total.add(result, step_tokens)
        window.add(result, step_tokens)
        bar.update(1)
        times.add_step(time.perf_counter() - step_start)
        if log_now:
            mean = reduce_loss(topo, window.loss, window.count)
            split = times.gather(topo.world)
            now = time.perf_counter()
            if topo.rank == 0:
                rate = window.tokens / (now - window.start)
                trainer.log.info(f"epoch {epoch + 1} step {i + 1}/{len(shard)}  loss {mean:.4f}  lr {lr:.2e}  "
                                 f"grad norm {grad_norm:.3f}  {rate:,.0f} tokens/s  step {split['step_s']:.3f} s: "
                                 f"{breakdown_summary(split)}")
                trainer.metrics.write("step", step=trainer.step, epoch=epoch + 1, loss=mean, lr=lr,
                                      grad_norm=grad_norm, tokens_per_s=rate, breakdown=split)
                bar.set_postfix(loss=f"{mean:.4f}", tokens_per_s=f"{rate:,.0f}")
            window = Sums()
        trainer.after_step()
        if trainer.tracer is not None:
            trainer.tracer.after_step(trainer.step - 1)
    bar.close()
    seconds = time.perf_counter() - total.start
    return EpochResult(epoch + 1, reduce_loss(topo, total.loss, total.count), total.tokens - tokens_before,
                       seconds, steps)


def optimizer_step(trainer, result, epoch: int, position: int):
    """Clip (the global norm is computed every step, for the non-finite check; scaled
    only when clipping), agree on a non-finite loss or norm, then step the optimizer
    and the schedule (or skip the step everywhere, or stop). Returns (norm, result):
    the result is None for a skipped step."""
    t = trainer.cfg.train
    overflow = precision.unscale_gradients(trainer.model)  # fp16 loss scaling: inf/NaN gradients on any rank
    grad_norm = trainer.model.clip_grad_norm_(t.max_grad_norm if t.max_grad_norm > 0 else math.inf)
    bad = not overflow and nonfinite.step_is_bad(trainer.topo, result, grad_norm)
    if bad and t.nonfinite == "stop":
        nonfinite.stop(trainer, epoch, position)
    if bad:
        trainer.skipped_steps += 1
        result = None
        if trainer.topo.rank == 0:
            trainer.log.warning(f"step {trainer.step + 1}: non-finite loss or gradient norm; step skipped on "
                                f"every rank ({trainer.skipped_steps} so far)")
    elif overflow:
        result = None  # skipped on every rank; the loss scale was backed off
    else:
        trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=False)
    return grad_norm, result
