"""Train a job through the Trainer and die (exit code 17, every rank) right
after step K's checkpoint is committed: a crash the next run must resume from.
usage: crash_after.py K JOB.toml [--set k=v ...]"""
import os
import sys

import mpitrain

k, job = int(sys.argv[1]), sys.argv[2]
sets = [a for a in sys.argv[3:] if a != "--set"]
trainer = mpitrain.Trainer(job_file=job, overrides=sets)
original = trainer.after_step


def after_step():
    original()
    if trainer.step == k:
        trainer.saver.finish()
        trainer.topo.world.Barrier()
        sys.stdout.flush()
        os._exit(17)


trainer.after_step = after_step
trainer.fit()
raise SystemExit(f"trained to the end without reaching step {k}")
