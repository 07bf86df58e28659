"""fp16 dynamic loss scaling with the device faked: the model computes in fp32 on
the CPU, a `LossScaler` is forced on, and world rank 1 sets one of its gradients to
inf after step INJECT's backward (after the data-parallel all-reduce: only rank 1
sees it). Every rank must skip that optimizer step and back off the scale alike.
With --no-scaler the same injection goes to the non-finite path instead (run
with train.nonfinite = "skip"): both runs must end with the same parameters.
Writes OUTDIR/rank-R.json: per step the scale used, the engine's grad_scale,
whether the parameters changed; the final scaler state; a parameter digest.
--load CKPT loads a checkpoint after the scaler is forced on (its loss scale must be
restored) and records the scaler's state then.
usage: precision_overflow.py OUTDIR JOB.toml STEPS INJECT [--no-scaler] [--load CKPT] [--set k=v ...]"""
import hashlib
import json
import sys
from pathlib import Path

import torch

import mpitrain
from mpitrain.train.loop import run_epoch
from mpitrain.train.precision import LossScaler

out, job, steps, inject = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rest = sys.argv[5:]
load = rest[rest.index("--load") + 1] if "--load" in rest else None
sets = [a for a in rest if a not in ("--set", "--no-scaler", "--load", load)]
trainer = mpitrain.Trainer(job_file=job, overrides=sets)
model, rank = trainer.model, trainer.topo.rank
if "--no-scaler" not in rest:
    model.scaler = LossScaler(init_scale=2.0 ** 10, growth_interval=3)  # what precision = "fp16" sets up
loaded = None
if load:
    trainer.load_checkpoint(load)
    loaded = model.scaler.state_dict()
log = []


def params():
    return [p.detach().clone() for _, p in model.named_parameters()]


train_step = model.train_step


def injecting_step(*args, step, **kwargs):
    before = params()
    scale = model.scaler.scale if model.scaler is not None else None
    result = train_step(*args, step=step, **kwargs)
    if step == inject and rank == 1:
        next(p for _, p in model.named_parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")
    log.append({"step": step, "scale": scale, "grad_scale": model.engine.grad_scale, "before": before})
    return result


def stepped(*_):
    log[-1]["optimizer_step"] = True


model.train_step = injecting_step
trainer.optimizer.register_step_post_hook(stepped)
run_epoch(trainer, 0, stop=steps)
if trainer.saver is not None:
    trainer.saver.finish()
after = [e["before"] for e in log[1:]] + [params()]
for entry, new in zip(log, after):
    old = entry.pop("before")
    entry["changed"] = any(not torch.equal(a, b) for a, b in zip(old, new))
    entry.setdefault("optimizer_step", False)
digest = hashlib.sha256(b"".join(p.numpy().tobytes() for p in params())).hexdigest()
(out / f"rank-{rank}.json").write_text(json.dumps({
    "log": log, "scaler": model.scaler.state_dict() if model.scaler is not None else None,
    "skipped_steps": trainer.skipped_steps, "digest": digest, "loaded": loaded}))
trainer.close()
