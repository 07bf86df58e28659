"""Train the job's model on every rank of the grid (dp x pp), evaluating on the dev
split after each epoch and on the test split at the end.

Results go to the run directory: metrics.jsonl (one line per epoch),
eval_dev.json, eval_test.json, and model/ (a Hugging Face-format export).
A run directory that already holds results is never overwritten: the next free
name (RUN_DIR-2, RUN_DIR-3, ...) is used instead."""
from __future__ import annotations

import json
from pathlib import Path

from ..failure import agree_or_exit, on_root_or_exit
from ..runtime import add_job_arguments, start_job

HELP = "train a job (the default job when no job file is given)"
DEFAULT_JOB = Path(__file__).resolve().parent.parent.parent / "jobs" / "default.toml"


def add_arguments(parser) -> None:
    add_job_arguments(parser, job_required=False)


def choose_run_dir(base: str) -> str:
    path = Path(base)
    n = 1
    while (path / "metrics.jsonl").exists() or (path / "model").exists():
        n += 1
        path = Path(f"{base}-{n}")
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def run(args) -> int:
    if args.job is None:
        args.job = str(DEFAULT_JOB)
    job = start_job(args)
    cfg, topo, log = job.cfg, job.topo, job.log
    import torch

    from ..ner import task
    from ..ner.dataset import NerH5Dataset
    from ..train.loop import Trainer, check_batch
    from ..train.losses import TokenCrossEntropy
    from ..train.parallel import ParallelModel

    pp = topo.grid.pp
    microbatches = cfg.pipeline.microbatches or (2 * pp if pp > 1 else 1)
    agree_or_exit(lambda: check_batch(cfg, topo, microbatches), topo.world)
    run_dir = Path(on_root_or_exit(lambda: choose_run_dir(cfg.run_dir), topo.world))
    data = on_root_or_exit(lambda: task.prepare(cfg), topo.world)
    if topo.rank == 0:
        log.info(f"{cfg.job.name}: {topo.size} ranks = dp {topo.grid.dp} x pp {pp}, {microbatches} "
                 f"micro-batch(es) per replica, schedule {cfg.pipeline.schedule}; run dir {run_dir}")
    train_ds, dev_ds, test_ds = (NerH5Dataset(data.paths[s]) for s in task.SPLITS)
    labels = data.labels
    config, specs = task.model_specs(cfg, len(labels), data.tokenizer_dir)
    method = list(cfg.pipeline.cuts) if cfg.pipeline.partition == "cuts" else cfg.pipeline.partition
    sample = train_ds.batch(list(range(min(len(train_ds), max(1, cfg.train.global_batch // topo.grid.dp)))))[:2]
    loss = TokenCrossEntropy()
    model = ParallelModel(topo, specs, loss, seed=cfg.job.seed, schedule=cfg.pipeline.schedule,
                          partition=method, comm_cfg=cfg.comm, sample=sample)
    torch.manual_seed(cfg.job.seed * 100003 + topo.rank)  # dropout draws, distinct per rank
    if topo.rank == 0:
        log.info(model.partition.plan())
    limit = cfg.data.limit
    num_train = min(len(train_ds), limit) if limit else len(train_ds)

    def batch_fn(indices):
        ids, mask, lab = train_ds.batch(indices)
        return (ids, mask), lab, int(mask.sum())

    trainer = Trainer(cfg, topo, model, num_train, batch_fn, loss.count, microbatches, log)
    metrics_path = run_dir / "metrics.jsonl"
    for epoch in range(cfg.train.epochs):
        result = trainer.train_epoch(epoch)
        report = task.evaluate(model, dev_ds, topo, cfg.train.eval_batch, microbatches, labels, limit)
        if topo.rank == 0:
            rate = result.tokens / result.seconds
            log.info(f"epoch {result.epoch}: train loss {result.loss:.4f}, {result.steps} steps in "
                     f"{result.seconds:.1f} s, {rate:,.0f} tokens/s")
            log.info(f"dev (epoch {result.epoch}): precision {report['precision']:.4f} recall "
                     f"{report['recall']:.4f} f1 {report['f1']:.4f}\n{report['report']}")
            line = {"epoch": result.epoch, "train_loss": result.loss, "steps": result.steps,
                    "seconds": result.seconds, "tokens_per_s": rate,
                    "dev": task.summary(report)}
            with metrics_path.open("a") as f:
                f.write(json.dumps(line) + "\n")
            task.write_json(run_dir / "eval_dev.json", {"epoch": result.epoch, **report})
    report = task.evaluate(model, test_ds, topo, cfg.train.eval_batch, microbatches, labels, limit)
    if topo.rank == 0:
        log.info(f"test: precision {report['precision']:.4f} recall {report['recall']:.4f} "
                 f"f1 {report['f1']:.4f}\n{report['report']}")
        task.write_json(run_dir / "eval_test.json", report)
    exported = task.export(model, config, labels, data.tokenizer_dir, run_dir / "model", topo)
    if topo.rank == 0:
        log.info(f"model exported to {exported}")
    model.close()
    return 0
