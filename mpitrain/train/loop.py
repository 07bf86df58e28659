"""The training loop: epochs of sharded global batches through a ParallelModel."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..data.sharding import epoch_indices, steps_per_epoch
from ..log import progress
from .optim import linear_schedule, make_adamw
from .parallel import ParallelModel, split_microbatches


@dataclass
class EpochResult:
    epoch: int
    loss: float | None          # mean train loss per loss term (rank 0 only)
    tokens: int                 # non-padding tokens processed, all replicas
    seconds: float
    steps: int
    extra: dict = field(default_factory=dict)


def check_batch(cfg, topo, microbatches: int) -> None:
    from ..errors import ConfigError

    t, dp = cfg.train, topo.grid.dp
    if t.global_batch % dp:
        raise ConfigError(f"{cfg.source}: [train] global_batch = {t.global_batch} is not divisible by "
                          f"dp = {dp}; use a multiple of {dp}")
    if t.global_batch // dp < microbatches:
        raise ConfigError(f"{cfg.source}: [train] global_batch / dp = {t.global_batch // dp} sentences "
                          f"cannot fill {microbatches} micro-batches; raise global_batch or lower "
                          f"[pipeline] microbatches")


class Trainer:
    """`batch_fn(indices) -> (inputs_tuple, targets, n_tokens)`; `count_fn(targets) -> int`."""

    def __init__(self, cfg, topo, model: ParallelModel, num_samples: int, batch_fn, count_fn,
                 microbatches: int, log):
        self.cfg, self.topo, self.model, self.log = cfg, topo, model, log
        self.num_samples, self.batch_fn, self.count_fn = num_samples, batch_fn, count_fn
        self.microbatches = microbatches
        t = cfg.train
        self.steps_per_epoch = steps_per_epoch(num_samples, t.global_batch, t.tail)
        total = self.steps_per_epoch * t.epochs
        self.optimizer = make_adamw(model.named_parameters(), t.lr, t.weight_decay)
        self.scheduler = linear_schedule(self.optimizer, total, int(round(t.warmup * total)))
        self.step = 0

    def _reduce_loss(self, loss_sum: float, count: int) -> float | None:
        from mpi4py import MPI

        total = self.topo.world.reduce(np.array([loss_sum, count], dtype=np.float64), op=MPI.SUM, root=0)
        if self.topo.rank != 0:
            return None
        return float(total[0] / total[1]) if total[1] else float("nan")

    def train_epoch(self, epoch: int) -> EpochResult:
        cfg, topo, t = self.cfg, self.topo, self.cfg.train
        shard = epoch_indices(self.num_samples, epoch, cfg.job.seed, topo.coords.dp, topo.grid.dp,
                              t.global_batch, t.tail)
        loss_sum = window_loss = 0.0
        count = window_count = tokens = window_tokens = 0
        start = window_start = time.perf_counter()
        bar = progress(total=len(shard), rank=topo.rank, desc=f"epoch {epoch + 1}", unit="step")
        for i, indices in enumerate(shard):
            parts = split_microbatches(indices, self.microbatches)
            batches = [self.batch_fn(p) for p in parts]
            local = np.array([sum(self.count_fn(b[1]) for b in batches), sum(b[2] for b in batches)],
                             dtype=np.int64)
            normalizer, step_tokens = (topo.dp_comm.allreduce(local) if topo.grid.dp > 1 else local).tolist()
            result = self.model.train_step([(b[0], b[1]) for b in batches], max(1, normalizer))
            if t.max_grad_norm > 0:
                self.model.clip_grad_norm_(t.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=False)
            self.step += 1
            tokens += step_tokens
            window_tokens += step_tokens
            if result is not None:
                loss_sum += result[0]
                count += result[1]
                window_loss += result[0]
                window_count += result[1]
            bar.update(1)
            if (i + 1) % t.log_every == 0 and i + 1 < len(shard):
                mean = self._reduce_loss(window_loss, window_count)
                now = time.perf_counter()
                if topo.rank == 0:
                    rate = window_tokens / (now - window_start)
                    self.log.info(f"epoch {epoch + 1} step {i + 1}/{len(shard)}  loss {mean:.4f}  "
                                  f"lr {self.scheduler.get_last_lr()[0]:.2e}  {rate:,.0f} tokens/s")
                window_loss, window_count, window_tokens, window_start = 0.0, 0, 0, now
        bar.close()
        seconds = time.perf_counter() - start
        return EpochResult(epoch + 1, self._reduce_loss(loss_sum, count), tokens, seconds, len(shard))
