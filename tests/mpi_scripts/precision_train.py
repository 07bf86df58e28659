"""Train K steps of a job on the current layout, then write what the precision and
recompute tests compare: OUTDIR/rank-R.npz (this rank's parameters, global names)
and, from rank 0, OUTDIR/result.json (each step's mean train loss over the global
batch, dev loss, dtypes of parameters, gradients and optimizer state, dtypes of the
activations each stage sent, each rank's peak activation bytes).
usage: precision_train.py OUTDIR JOB.toml STEPS [--dev] [--set k=v ...]"""
import json
import sys
from pathlib import Path

import numpy as np

import mpitrain
from mpitrain.train.evaluation import mean_loss
from mpitrain.train.loop import run_epoch

out, job, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rest = sys.argv[4:]
sets = [a for a in rest if a not in ("--set", "--dev")]
trainer = mpitrain.Trainer(job_file=job, overrides=sets)
model, engine, topo = trainer.model, trainer.model.engine, trainer.topo
engine.track_memory(True)
losses, peaks, sent, grad_dtypes = [], [], set(), set()

train_step = model.train_step


def recording_step(*args, **kwargs):
    result = train_step(*args, **kwargs)
    losses.append(list(result) if result is not None else [0.0, 0])
    peaks.append(engine.stats.peak_activation_bytes)
    grad_dtypes.update(str(p.grad.dtype) for p in engine.parameters() if p.grad is not None)
    return result


post_send = engine.p2p._post_send


def recording_send(msg):
    if msg.kind == "act":
        sent.update(str(t.dtype) for t in msg.tensors if t.is_floating_point())
    return post_send(msg)


model.train_step, engine.p2p._post_send = recording_step, recording_send
run_epoch(trainer, 0, stop=steps)
dev = mean_loss(trainer, "dev") if "--dev" in rest else None
state = model.logical_state()
np.savez(out / f"rank-{topo.rank}.npz", **{k: v.float().numpy() for k, v in state.items()})
opt_dtypes = {str(v.dtype) for s in trainer.optimizer.state.values() for v in s.values() if v.dim()}
mine = {"losses": losses, "peak": max(peaks), "sent": sorted(sent), "grads": sorted(grad_dtypes),
        "params": sorted({str(p.dtype) for p in engine.parameters()}), "optimizer": sorted(opt_dtypes)}
every = topo.world.gather(mine, root=0)
if topo.rank == 0:
    sums = np.array([r["losses"] for r in every], dtype=np.float64).sum(axis=0)
    (out / "result.json").write_text(json.dumps({
        "train_loss": (sums[:, 0] / sums[:, 1]).tolist(), "dev_loss": dev,
        "peak_activation_bytes": [r["peak"] for r in every], "sent_dtypes": sorted({d for r in every for d in r["sent"]}),
        "param_dtypes": sorted({d for r in every for d in r["params"]}),
        "grad_dtypes": sorted({d for r in every for d in r["grads"]}),
        "optimizer_dtypes": sorted({d for r in every for d in r["optimizer"]})}))
trainer.close()
