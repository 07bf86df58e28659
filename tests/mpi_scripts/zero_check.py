"""ZeRO-1 against the unsharded optimizer, in one launch: every variant is trained
twice on this layout, with [comm] zero = 0 and 1, and this rank's parameters,
optimizer state (gathered by name), gradient norms, skipped steps and state
bytes are compared. Writes OUTDIR/rank-R.json.
usage: zero_check.py OUTDIR JOB.toml [--variants a,b] [--steps K] [--save] [--resume]
                     [--load CHECKPOINT ...] [--set k=v ...]

Variants: adamw (weight decay), sgd (momentum; a NaN put into one gradient
element on dp rank 0 at step 2, skipped), clip (adamw, clipping engaged).
--save: checkpoint the adamw runs at the last step (RUN/checkpoints).
--resume: the adamw zero = 1 run again from its checkpoint half-way (a fresh
Trainer), compared bitwise with the straight run.
--load: each checkpoint loaded into a zero = 0 and a zero = 1 Trainer: their
optimizer state (by name) is written to OUTDIR/loaded-I-Z-rank-R.npz, then both
train to the end of the epoch and are compared."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

import mpitrain
from mpitrain.train.loop import run_epoch
from mpitrain.train.state import optimizer_state_bytes

args = sys.argv[1:]
out, job = Path(args[0]), args[1]
variants, steps, save, resume, loads, sets = ["adamw", "sgd", "clip"], 4, False, False, [], []
i = 2
while i < len(args):
    a = args[i]
    if a == "--variants":
        variants, i = args[i + 1].split(","), i + 2
    elif a == "--steps":
        steps, i = int(args[i + 1]), i + 2
    elif a == "--save":
        save, i = True, i + 1
    elif a == "--resume":
        resume, i = True, i + 1
    elif a == "--load":
        loads.append(args[i + 1])
        i += 2
    elif a == "--set":
        sets.append(args[i + 1])
        i += 2
    else:
        raise SystemExit(f"unknown argument {a}")

ADAMW = ['train.optimizer="adamw"', "train.lr=3e-3", "train.weight_decay=0.1", "train.warmup=0.0"]
VARIANTS = {"adamw": ADAMW, "sgd": ['train.optimizer="sgd"', "train.momentum=0.9", 'train.nonfinite="skip"'],
            "clip": ADAMW + ["train.max_grad_norm=0.05"]}


def named_optimizer(trainer) -> dict:
    """{name/stat: tensor} of the optimizer state by global name (collective with zero)."""
    state = trainer.state_dict()["optimizer"]["state"]
    return {f"{n}/{k}": v.detach().float().clone() for n, st in state.items() for k, v in st.items()}


def build(tag, extra):
    return mpitrain.Trainer(job_file=job, overrides=sets + extra + [f'job.run_dir="{out}/{tag}"',
                                                                     "checkpoint.background=false",
                                                                     "checkpoint.every_epoch=false"])


def inject_nan(trainer, at_step):
    """Put a NaN into one reduced gradient element on dp rank 0 before clipping at `at_step`."""
    model, original = trainer.model, trainer.model.clip_grad_norm_

    def clip(max_norm):
        if trainer.step + 1 == at_step and trainer.topo.coords.dp == 0:
            if model.shards is not None:
                model.shards.segments[0].grad[0] = math.nan
            else:
                next(p for _, p in model.named_parameters() if p.grad is not None).grad.view(-1)[0] = math.nan
        return original(max_norm)
    model.clip_grad_norm_ = clip


def record_norms(trainer):
    norms, original = [], trainer.model.clip_grad_norm_

    def clip(max_norm):
        norms.append(original(max_norm))
        return norms[-1]
    trainer.model.clip_grad_norm_ = clip
    return norms


def train(tag, extra, nan_at=None):
    trainer = build(tag, extra)
    trainer.initial = trainer.model.local_state()
    if nan_at:
        inject_nan(trainer, nan_at)
    norms = record_norms(trainer)
    run_epoch(trainer, trainer.epoch, start=trainer.step_in_epoch)
    return trainer, norms


def diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a), default=0.0)


report = {"variants": {}, "loads": []}
for name in variants:
    extra = VARIANTS[name] + [f"train.max_steps={steps}"]
    if save and name == "adamw":
        extra += [f"checkpoint.every_steps={steps // 2}"]
    runs = {}
    for zero in (0, 1):
        trainer, norms = train(f"{name}-{zero}", extra + [f"comm.zero={zero}"], nan_at=2 if name == "sgd" else None)
        params = trainer.model.local_state()
        runs[zero] = {"params": params, "moved": diff(params, trainer.initial), "optim": named_optimizer(trainer),
                      "norms": norms, "bytes": optimizer_state_bytes(trainer.optimizer),
                      "skipped": trainer.skipped_steps, "zero": trainer.model.shards is not None}
        trainer.close()
    a, b = runs[0], runs[1]
    report["variants"][name] = {
        "params": diff(a["params"], b["params"]), "optim": diff(a["optim"], b["optim"]),
        "norms": [a["norms"], b["norms"]], "bytes": [a["bytes"], b["bytes"]], "skipped": [a["skipped"], b["skipped"]],
        "sharded": b["zero"], "moved": [a["moved"], b["moved"]]}
    if resume and name == "adamw":
        root = out / "adamw-1" / "checkpoints"
        half = root / f"step-{steps // 2:08d}"
        assert half.is_dir(), sorted(p.name for p in root.iterdir())
        again, _ = train("adamw-1-resumed", extra + ["comm.zero=1", f'checkpoint.resume="{half}"'])
        assert again.step == steps
        p2, o2 = again.model.local_state(), named_optimizer(again)
        again.close()
        report["resumed_bitwise"] = {
            "params": all(torch.equal(b["params"][k], p2[k]) for k in p2) and p2.keys() == b["params"].keys(),
            "optim": all(torch.equal(b["optim"][k], o2[k]) for k in o2) and o2.keys() == b["optim"].keys()}

for index, path in enumerate(loads):
    finals = {}
    for zero in (0, 1):
        extra = ADAMW + [f'checkpoint.resume="{path}"', f"comm.zero={zero}"]
        trainer = build(f"load-{index}-{zero}", extra)
        start = trainer.step
        state = named_optimizer(trainer)
        np.savez(out / f"loaded-{index}-{zero}-rank-{trainer.topo.rank}.npz",
                 **{k: v.numpy() for k, v in state.items()})
        run_epoch(trainer, trainer.epoch, start=trainer.step_in_epoch)  # the rest of the epoch
        finals[zero] = (trainer.model.local_state(), named_optimizer(trainer), trainer.step - start)
        trainer.close()
    report["loads"].append({"params": diff(finals[0][0], finals[1][0]), "optim": diff(finals[0][1], finals[1][1]),
                            "steps": [finals[0][2], finals[1][2]]})

rank = MPI.COMM_WORLD.Get_rank()
(out / f"rank-{rank}.json").write_text(json.dumps(report))
print(f"rank {rank}: {json.dumps(report)}", flush=True)
