"""Train one epoch of a job on the current layout through the public API, then
save every rank's parameters (global names) to OUTDIR/rank-R.npz.
usage: layout_train.py OUTDIR JOB.toml [--wrong-grad-scale] [--set k=v ...]

--wrong-grad-scale halves the backward scale: a deliberate bug the layout
tests must catch."""
import json
import sys
from pathlib import Path

import numpy as np

import mpitrain
from mpitrain.train.loop import run_epoch

out, job = Path(sys.argv[1]), sys.argv[2]
rest = sys.argv[3:]
sets = [a for a in rest if a not in ("--set", "--wrong-grad-scale")]
trainer = mpitrain.Trainer(job_file=job, overrides=sets)
if "--wrong-grad-scale" in rest:
    trainer.model.engine.grad_scale *= 0.5
result = run_epoch(trainer, 0)
state = trainer.model.logical_state()  # tensor shards joined: compared whole
np.savez(out / f"rank-{trainer.topo.rank}.npz", **{k: v.float().numpy() for k, v in state.items()})
info = [{**i, "split": i["split"].to_json() if i["split"] else None} for i in trainer.model.param_info()]
(out / f"info-{trainer.topo.rank}.json").write_text(json.dumps(info))
if trainer.topo.rank == 0:
    print(f"steps {result.steps} loss {result.loss:.6f}", flush=True)
trainer.close()
