"""The Trainer owns a run: it starts the job on every rank, lets the task prepare
its data and describe its model, builds the parallel model, optimizer and
schedule, and `fit()` trains the epochs, evaluates after each, tests and
exports at the end. It knows nothing of any particular task.

Its state (`state_dict()`) is a plain dict: step, epoch, position in the epoch,
optimizer and scheduler state under global parameter names, and the RNG.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from ..failure import agree_or_exit, on_root_or_exit
from ..runtime import Job, start_job
from .loop import run_epoch
from .metrics import MetricsSink, numbers
from .optim import make_optimizer, make_schedule
from .parallel import ParallelModel
from .state import load_optimizer_state, optimizer_state


def choose_run_dir(base: str) -> str:
    """`base`, or the first of base-2, base-3, ... that holds no results yet."""
    path = Path(base)
    n = 1
    while (path / "metrics.jsonl").exists() or (path / "model").exists():
        n += 1
        path = Path(f"{base}-{n}")
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def check_batch(cfg, dp: int, microbatches: int) -> None:
    t = cfg.train
    if t.global_batch % dp:
        raise ConfigError(f"{cfg.source}: [train] global_batch = {t.global_batch} is not divisible by "
                          f"dp = {dp}; use a multiple of {dp}")
    if t.global_batch // dp < microbatches:
        raise ConfigError(f"{cfg.source}: [train] global_batch / dp = {t.global_batch // dp} samples "
                          f"cannot fill {microbatches} micro-batches; raise global_batch or lower "
                          f"[pipeline] microbatches")


class Trainer:
    """``Trainer(task, "job.toml", grid={"dp": 2}, train={"lr": 1e-3}).fit()``.

    `task`: a task object or spec string (None = the job's `[job] task`);
    `job_file`: a TOML job file (None = defaults); `overrides`: "section.key=value" strings;
    keyword sections override keys by section. Collective: call it on every rank.
    """

    def __init__(self, task=None, job_file=None, *, overrides=(), verbose: bool = False,
                 started: Job | None = None, **sections):
        started = started or start_job(job=job_file, overrides=overrides, task=task, sections=sections,
                                       verbose=verbose)
        self.cfg, self.topo, self.log = started.cfg, started.topo, started.log
        cfg, topo = self.cfg, self.topo
        self.task = cfg.task
        pp = topo.grid.pp
        self.microbatches = cfg.pipeline.microbatches or (2 * pp if pp > 1 else 1)
        agree_or_exit(lambda: check_batch(cfg, topo.grid.dp, self.microbatches), topo.world)
        self.run_dir = Path(on_root_or_exit(lambda: choose_run_dir(cfg.run_dir), topo.world))
        self.prepared = on_root_or_exit(lambda: self.task.prepare(cfg), topo.world)
        self.datasets, self.spec = agree_or_exit(
            lambda: (self.task.datasets(cfg, self.prepared), self.task.model(cfg, self.prepared)), topo.world)
        if "train" not in self.datasets:
            raise ConfigError(f"task {cfg.job.task!r}: datasets() has no 'train' split")
        self.train_set = self.datasets["train"]
        if self.topo.rank == 0:
            self.log.info(f"{cfg.job.name}: task {cfg.job.task}, {topo.size} ranks = dp {topo.grid.dp} x "
                          f"pp {pp}, {self.microbatches} micro-batch(es) per replica, schedule "
                          f"{cfg.pipeline.schedule}; run dir {self.run_dir}")
        self.model = self._build_model()
        t = cfg.train
        from ..data.sharding import steps_per_epoch

        self.steps_per_epoch = steps_per_epoch(len(self.train_set), t.global_batch, t.tail)
        total = self.steps_per_epoch * t.epochs
        self.total_steps = min(total, t.max_steps) if t.max_steps else total
        self.optimizer = make_optimizer(self.model.named_parameters(), t)
        self.scheduler = make_schedule(self.optimizer, t.schedule, self.total_steps,
                                       int(round(t.warmup * self.total_steps)))
        self.metrics = MetricsSink(self.run_dir, topo.rank)
        self.step = self.epoch = self.step_in_epoch = 0
        torch.manual_seed(cfg.job.seed * 100003 + topo.rank)  # dropout draws, distinct per rank

    def _build_model(self) -> ParallelModel:
        cfg, topo, spec = self.cfg, self.topo, self.spec
        method = list(cfg.pipeline.cuts) if cfg.pipeline.partition == "cuts" else cfg.pipeline.partition
        sample = spec.sample
        if sample is None and method == "profile":
            per_replica = max(1, cfg.train.global_batch // topo.grid.dp)
            sample = self.train_set.batch(list(range(min(len(self.train_set), per_replica))))[0]
        model = ParallelModel(topo, spec.layers, spec.loss, seed=cfg.job.seed, schedule=cfg.pipeline.schedule,
                              partition=method, comm_cfg=cfg.comm, sample=sample, tied=spec.tied)
        if topo.rank == 0:
            if spec.description:
                self.log.info(f"model: {spec.description}")
            self.log.info(model.partition.plan())
        return model

    # -- the run ------------------------------------------------------------------------------
    def fit(self) -> dict | None:
        """Train every epoch (from the current state), evaluate the dev split after
        each, then the test split, then export. The final metrics on rank 0."""
        cfg, log, rank0 = self.cfg, self.log, self.topo.rank == 0
        while self.epoch < cfg.train.epochs and not self.done:
            result = run_epoch(self, self.epoch, start=self.step_in_epoch)
            dev = self.evaluate("dev") if "dev" in self.datasets else None
            if rank0:
                rate = result.tokens / result.seconds if result.seconds else 0.0
                log.info(f"epoch {result.epoch}: train loss {result.loss:.4f}, {result.steps} steps in "
                         f"{result.seconds:.1f} s, {rate:,.0f} tokens/s")
                self._show("dev", dev, f" (epoch {result.epoch})")
                self.metrics.write("epoch", epoch=result.epoch, train_loss=result.loss, steps=result.steps,
                                   seconds=result.seconds, tokens_per_s=rate, dev=numbers(dev))
                if dev is not None:
                    self.metrics.write_json("eval_dev.json", {"epoch": result.epoch, **dev})
            self.epoch += 1
            self.step_in_epoch = 0
        final = {}
        if "test" in self.datasets:
            final = self.evaluate("test")
            if rank0:
                self._show("test", final)
                self.metrics.write_json("eval_test.json", final)
        if hasattr(self.task, "after_fit"):
            self.task.after_fit(self)
        if hasattr(self.task, "export"):
            exported = self.task.export(self, self.run_dir / "model")
            if rank0 and exported:
                log.info(f"model exported to {exported}")
        return final if rank0 else None

    @property
    def done(self) -> bool:
        return bool(self.cfg.train.max_steps) and self.step >= self.cfg.train.max_steps

    def evaluate(self, split: str) -> dict | None:
        """The task's metrics of `split` (world rank 0; None elsewhere). Collective."""
        return self.task.evaluate(self, split)

    def _show(self, split: str, metrics: dict | None, suffix: str = "") -> None:
        if metrics is None:
            return
        text = ", ".join(f"{k} {v:.4f}" for k, v in numbers(metrics).items() if k != "support")
        report = metrics.get("report")
        self.log.info(f"{split}{suffix}: {text}" + (f"\n{report}" if isinstance(report, str) else ""))

    def close(self) -> None:
        self.model.close()

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """This rank's part of the run state, as a plain dict (see the module doc)."""
        return {"step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "optimizer": optimizer_state(self.optimizer, self.model.named_parameters()),
                "scheduler": self.scheduler.state_dict(), "rng": {"torch": torch.get_rng_state()}}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        load_optimizer_state(self.optimizer, self.model.named_parameters(), state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
