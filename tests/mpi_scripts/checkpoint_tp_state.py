"""Save a checkpoint on one layout, or load one on another, and write the whole
model's parameters and optimizer state with their logical shapes (gathered to
rank 0, tensor shards joined) to OUT.npz, as keys model/<name> and
optim/<name>/<stat>.
usage: checkpoint_tp_state.py OUT.npz save K ROOT JOB.toml [--set k=v ...]
           (train K steps, then save a checkpoint under ROOT)
       checkpoint_tp_state.py OUT.npz load CKPT JOB.toml [--set k=v ...]"""
import sys
from pathlib import Path

import numpy as np

import mpitrain
from mpitrain.bench.checkpoint import gathered_state
from mpitrain.checkpoint.save import CheckpointSaver
from mpitrain.train.loop import run_epoch

out, mode = Path(sys.argv[1]), sys.argv[2]
if mode == "save":
    k, root, job, rest = int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5], sys.argv[6:]
else:
    ckpt, job, rest = Path(sys.argv[3]), sys.argv[4], sys.argv[5:]
sets = [a for a in rest if a != "--set"]
trainer = mpitrain.Trainer(job_file=job, overrides=sets, training=False)
if mode == "save":
    run_epoch(trainer, 0, stop=k)
    saver = CheckpointSaver(trainer, root, keep=1, background=True)
    saver.save()
    saver.finish()
else:
    trainer.load_checkpoint(ckpt)
state = gathered_state(trainer)
if trainer.topo.rank == 0:
    arrays = {f"model/{n}": v.float().numpy() for n, v in state["model"].items()}
    for name, stats in state["optimizer"].items():
        for stat, v in stats.items():
            arrays[f"optim/{name}/{stat}"] = np.asarray(v.float().numpy() if hasattr(v, "numpy") else v)
    np.savez(out, **arrays)
    print(f"{mode}: {len(arrays)} tensors, step {trainer.step}", flush=True)
trainer.close()
