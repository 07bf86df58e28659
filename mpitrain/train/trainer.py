"""The Trainer owns a run: it starts the job on every rank, lets the task prepare
its data and describe its model, builds the parallel model, optimizer and
schedule, and `fit()` trains the epochs, evaluates after each, tests and
exports at the end. It knows nothing of any particular task.

Its state (`state_dict()`) is a plain dict: step, epoch, position in the epoch,
optimizer and scheduler state under global parameter names, and the RNG.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..checkpoint.load import load_into, resume_latest
from ..checkpoint.save import CheckpointSaver
from ..comm.waits import MONITOR
from ..data.sharding import steps_per_epoch
from ..errors import ConfigError
from ..failure import agree_or_exit, on_root_or_exit
from ..runtime import Job, start_job
from ..slurm import env as slurm_env
from ..slurm.stop import STOP
from ..task import Model, run_user_code
from ..watchdog import Watchdog
from .loop import Sums, run_epoch
from .metrics import MetricsSink, numbers
from .optim import decay_groups, make_optimizer, make_schedule, optimizer_over
from .parallel import ParallelModel
from .run_dir import choose_run_dir, create_run_dir, mark_finished
from .state import load_optimizer_state, optimizer_state
from .stopping import stop_for_signal
from .trace import Tracer


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
    `training=False` (evaluation, export) claims no run directory, resumes and
    saves nothing.
    """

    def __init__(self, task=None, job_file=None, *, overrides=(), verbose: bool = False,
                 started: Job | None = None, training: bool = True, **sections):
        started = started or start_job(job=job_file, overrides=overrides, task=task, sections=sections,
                                       verbose=verbose)
        self.cfg, self.topo, self.log = started.cfg, started.topo, started.log
        cfg, topo = self.cfg, self.topo
        self.task = cfg.task
        pp = topo.grid.pp
        self.microbatches = cfg.pipeline.microbatches or (2 * pp if pp > 1 else 1)
        agree_or_exit(lambda: check_batch(cfg, topo.grid.dp, self.microbatches), topo.world)
        ck = cfg.checkpoint
        self.resuming = False
        status = None
        if training:  # chosen now, created only once the start has succeeded: a failed start leaves none
            requeued = slurm_env.continues_a_run()
            run_dir, status = on_root_or_exit(lambda: choose_run_dir(cfg, ck.resume == "auto", requeued),
                                              topo.world)
            if status == "finished":
                if topo.rank == 0:
                    self.log.info(f"{run_dir}: this job already finished; a requeued job does not run again")
                raise SystemExit(0)
            self.run_dir, self.resuming = Path(run_dir), status == "resume"
        else:
            self.run_dir = Path(cfg.run_dir)
        where = f"{cfg.source}: task {cfg.job.task!r}:"
        self.prepared = on_root_or_exit(lambda: run_user_code(f"{where} prepare(cfg)", self.task.prepare, cfg),
                                        topo.world)
        self.datasets, self.spec = agree_or_exit(lambda: self._task_parts(where, training), topo.world)
        self.train_set = self.datasets["train"]
        if self.topo.rank == 0:
            self.log.info(f"{cfg.job.name}: task {cfg.job.task}, {topo.size} ranks = dp {topo.grid.dp} x "
                          f"pp {pp}" + (f" x tp {topo.grid.tp}" if topo.grid.tp > 1 else "") +
                          f", {self.microbatches} micro-batch(es) per replica, schedule "
                          f"{cfg.pipeline.schedule}; run dir {self.run_dir}")
        self.model = agree_or_exit(lambda: self._build_model(where), topo.world)
        t = cfg.train
        self.steps_per_epoch = steps_per_epoch(len(self.train_set), t.global_batch, t.tail)
        total = self.steps_per_epoch * t.epochs
        self.total_steps = min(total, t.max_steps) if t.max_steps else total
        self.optimizer = self._make_optimizer()
        self.scheduler = make_schedule(self.optimizer, t.schedule, self.total_steps,
                                       int(round(t.warmup * self.total_steps)))
        self.metrics = MetricsSink(self.run_dir, topo.rank if training else -1)
        self.step = self.epoch = self.step_in_epoch = 0
        self.epoch_totals = Sums()
        # torch's dropout draws: distinct per replica and stage, the same on the shards of a
        # tensor group (their replicated activations must see the same masks)
        torch.manual_seed(cfg.job.seed * 100003 + topo.rank // topo.grid.tp)
        self.checkpoint_root = Path(ck.dir) if ck.dir else self.run_dir / "checkpoints"
        self.saver = None
        self.skipped_steps = 0   # optimizer steps skipped for a non-finite loss or gradient norm
        self._step_ended = None
        self.tracer = None       # a Tracer while fit() traces steps ([runtime] trace_steps)
        MONITOR.check_collectives = cfg.runtime.check_collectives
        self.watchdog = Watchdog(topo.world, topo.describe(), self.run_dir / "logs",
                                 cfg.runtime.stall_timeout) if training else None
        self.stop = STOP.install() if training else None
        if training:
            self._resume()
            if ck.every_steps or ck.every_epoch:
                self.saver = CheckpointSaver(self, self.checkpoint_root, keep=ck.keep, background=ck.background,
                                             best_metric=ck.best_metric, best_mode=ck.best_mode)
            if status == "new":
                on_root_or_exit(lambda: create_run_dir(self.run_dir, cfg), topo.world)

    def _resume(self) -> None:
        """Continue from a checkpoint when asked (after everything is built and seeded,
        so that restoring the RNG is the last thing that touches it)."""
        mode, log = self.cfg.checkpoint.resume, self.log
        if mode == "auto" and self.resuming:
            found = resume_latest(self, self.checkpoint_root, log)
            if self.topo.rank == 0:
                log.info(f"resumed from {found} at step {self.step} (epoch {self.epoch + 1}, step "
                         f"{self.step_in_epoch} of it)" if found else
                         f"no valid checkpoint in {self.checkpoint_root}; starting from the beginning")
        elif mode not in ("auto", "never"):
            self.load_checkpoint(mode)
            if self.topo.rank == 0:
                log.info(f"started from checkpoint {mode} at step {self.step}")

    def load_checkpoint(self, path, with_optimizer: bool = True) -> dict:
        """Load a named checkpoint on this layout (collective); a bad one is a one-line
        error, once, exit code 2."""
        return agree_or_exit(lambda: load_into(self, Path(path), with_optimizer), self.topo.world)

    def task_state(self) -> dict:
        """The task's own facts a checkpoint must agree with (JSON), e.g. its labels."""
        fn = getattr(self.task, "checkpoint_state", None)
        return fn(self.prepared) if fn else {}

    def after_step(self) -> None:
        """Called by the epoch loop after every optimizer step (collective)."""
        now = time.perf_counter()
        if self.watchdog is not None and self._step_ended is not None:
            self.watchdog.observe_step(now - self._step_ended)
        self._step_ended = now
        if self.stop is not None:
            got = self.stop.agreed(self.topo.world)
            if got:
                stop_for_signal(self, got)
        if self.saver is None:
            return
        every = self.cfg.checkpoint.every_steps
        if every and self.step % every == 0:
            self.saver.save()
        else:
            self.saver.poll()

    def _task_parts(self, where: str, training: bool):
        """The task's datasets and model, checked (every rank; `where` names the task)."""
        cfg, t = self.cfg, self.cfg.train
        datasets = run_user_code(f"{where} datasets(cfg, prepared)", self.task.datasets, cfg, self.prepared)
        if not isinstance(datasets, dict) or "train" not in datasets:
            raise ConfigError(f"{where} datasets() returned no 'train' split; return "
                              "{'train': ..., 'dev': ...}")
        size = run_user_code(f"{where} len() of the train split", len, datasets["train"])
        if training and steps_per_epoch(size, t.global_batch, t.tail) == 0:
            raise ConfigError(f"{where} the train split has {size} samples, fewer than [train] global_batch = "
                              f"{t.global_batch}, so an epoch has no step; lower global_batch, set [train] "
                              "tail = \"pad\", or give more training data")
        spec = run_user_code(f"{where} model(cfg, prepared)", self.task.model, cfg, self.prepared)
        if not isinstance(spec, Model):
            raise ConfigError(f"{where} model() returned {type(spec).__name__}, not mpitrain.Model; return "
                              "mpitrain.Model(layers, loss)")
        return datasets, spec

    def _build_model(self, where: str) -> ParallelModel:
        from . import precision

        cfg, topo, spec = self.cfg, self.topo, self.spec
        precision.check_device(cfg, topo.device)  # fp16 needs CUDA: a one-line error, exit 2
        if cfg.comm.zero and topo.grid.dp > 1 and torch.device(topo.device).type != "cpu":
            raise ConfigError(f"{cfg.source}: [comm] zero = 1 runs its reduce-scatter and all-gather on host "
                              f"memory, not on {topo.device}; use zero = 0 or runtime.device = \"cpu\"")
        method = list(cfg.pipeline.cuts) if cfg.pipeline.partition == "cuts" else cfg.pipeline.partition
        sample = spec.sample
        if sample is None and method == "profile":
            per_replica = max(1, cfg.train.global_batch // topo.grid.dp)
            indices = list(range(min(len(self.train_set), per_replica)))
            sample = run_user_code(f"{where} the train split's batch()", self.train_set.batch, indices)[0]
        model = ParallelModel(topo, spec.layers, spec.loss, seed=cfg.job.seed, schedule=cfg.pipeline.schedule,
                              partition=method, comm_cfg=cfg.comm, sample=sample, tied=spec.tied,
                              dropout=cfg.train.dropout, precision=cfg.train.precision,
                              recompute=cfg.pipeline.recompute, scaler=precision.make_scaler(cfg.train))
        if topo.rank == 0:
            if spec.description:
                self.log.info(f"model: {spec.description}")
            self.log.info(model.partition.plan())
        return model

    def _make_optimizer(self):
        """The job's optimizer; with [comm] zero = 1 (and dp > 1) its state sharded over
        the data-parallel group (`dp/zero.py`)."""
        t, model = self.cfg.train, self.model
        if model.shards is None:
            return make_optimizer(model.named_parameters(), t)
        from ..dp.zero import ZeroOptimizer

        named = model.named_parameters()
        optimizer = ZeroOptimizer(model.shards, named, decay_groups(named, t.weight_decay),
                                  lambda groups: optimizer_over(groups, t))
        owned = self.topo.world.gather(optimizer.owned_numel(), root=0)
        if self.topo.rank == 0:
            per_value = {"adamw": 2, "sgd": 1 if t.momentum else 0}[t.optimizer]
            least, most = min(owned), max(owned)
            self.log.info(f"zero 1: optimizer state sharded over dp {self.topo.grid.dp}: each rank holds the "
                          f"{t.optimizer} state of {least:,}..{most:,} parameter values "
                          f"({per_value * 4 * least / 2**20:.2f}..{per_value * 4 * most / 2**20:.2f} MiB "
                          "in fp32)")
        return optimizer

    # -- the run ------------------------------------------------------------------------------
    def fit(self) -> dict | None:
        """Train every epoch (from the current state), evaluate the dev split after
        each, then the test split, then export. The final metrics on rank 0."""
        cfg, log, rank0 = self.cfg, self.log, self.topo.rank == 0
        if self.watchdog is not None:
            self.watchdog.start()
        if cfg.runtime.trace_steps:
            self.tracer = Tracer(self.topo, self.run_dir / "trace.json", cfg.runtime.trace_steps, self.step)
        while self.epoch < cfg.train.epochs and not self.done:
            result = run_epoch(self, self.epoch, start=self.step_in_epoch)
            if self.step_in_epoch < self.steps_per_epoch:
                break  # stopped by train.max_steps in the middle of the epoch
            dev = self.evaluate("dev") if "dev" in self.datasets else None
            if rank0:
                rate = result.tokens / result.seconds if result.seconds else 0.0
                log.info(f"epoch {result.epoch}: train loss {result.loss:.4f}, {result.steps} steps in "
                         f"{result.seconds:.1f} s, {rate:,.0f} tokens/s")
                self._show("dev", dev, f" (epoch {result.epoch})")
                self.metrics.write("epoch", epoch=result.epoch, train_loss=result.loss, steps=self.step_in_epoch,
                                   skipped_steps=self.skipped_steps,
                                   seconds=result.seconds, tokens_per_s=rate, dev=numbers(dev))
                if dev is not None:
                    self.metrics.write_json("eval_dev.json", {"epoch": result.epoch, **dev})
            self.epoch += 1
            self.step_in_epoch = 0
            self.epoch_totals.restore(0.0, 0, 0)
            if self.saver is not None and cfg.checkpoint.every_epoch:
                self.saver.save(metrics=self.topo.world.bcast(numbers(dev), root=0))
        if self.saver is not None:
            self.saver.finish()
        if self.tracer is not None:
            self.tracer.finish()  # a run shorter than the traced steps writes what it has
            if rank0 and self.tracer.written:
                log.info(f"trace of {cfg.runtime.trace_steps} step(s) written to {self.tracer.path} "
                         "(open it in https://ui.perfetto.dev)")
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
        if rank0:
            mark_finished(self.run_dir, cfg)
        if self.watchdog is not None:
            self.watchdog.stop()
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
