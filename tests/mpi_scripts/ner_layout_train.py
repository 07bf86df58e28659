"""Train the NER job for one short epoch on the current layout and save every
parameter (global names) to OUT.npz on rank 0.
usage: ner_layout_train.py OUT.npz JOB.toml [--set k=v ...]"""
import sys

import numpy as np

from mpitrain.failure import on_root_or_exit
from mpitrain.ner import task
from mpitrain.ner.dataset import NerH5Dataset
from mpitrain.runtime import start_job
from mpitrain.train.loop import Trainer
from mpitrain.train.losses import TokenCrossEntropy
from mpitrain.train.parallel import ParallelModel


class Args:
    def __init__(self, job, sets):
        self.job, self.set, self.verbose = job, sets, False


out, job_path = sys.argv[1], sys.argv[2]
sets = [a for a in sys.argv[3:] if a != "--set"]
job = start_job(Args(job_path, sets))
cfg, topo = job.cfg, job.topo
data = on_root_or_exit(lambda: task.prepare(cfg), topo.world)
train_ds = NerH5Dataset(data.paths["train"])
config, specs = task.model_specs(cfg, len(data.labels), data.tokenizer_dir)
loss = TokenCrossEntropy()
micro = cfg.pipeline.microbatches or (2 * topo.grid.pp if topo.grid.pp > 1 else 1)
model = ParallelModel(topo, specs, loss, seed=cfg.job.seed, schedule=cfg.pipeline.schedule,
                      partition=cfg.pipeline.partition, comm_cfg=cfg.comm)


def batch_fn(indices):
    ids, mask, lab = train_ds.batch(indices)
    return (ids, mask), lab, int(mask.sum())


trainer = Trainer(cfg, topo, model, min(len(train_ds), cfg.data.limit), batch_fn, loss.count, micro, job.log)
result = trainer.train_epoch(0)
state = model.gather_state(root=0)
if topo.rank == 0:
    np.savez(out, **{k: v.float().numpy() for k, v in state.items()})
    print(f"steps {result.steps} loss {result.loss:.6f}", flush=True)
model.close()
