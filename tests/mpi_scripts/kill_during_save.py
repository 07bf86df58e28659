"""Train a job and SIGKILL one rank at a random moment of a checkpoint save,
chosen by SEED: while a rank writes its file (after a random delay), before the
manifest, after it, after the rename into place, after `latest` moved, or while
old checkpoints are pruned. A fault-injection harness: it patches the saving
module's steps, it does not change them.
usage: kill_during_save.py SEED JOB.toml [--set k=v ...]"""
import os
import random
import signal
import sys
import threading

import mpitrain
import mpitrain.checkpoint.save as save

POINTS = ("write", "before_manifest", "after_manifest", "after_rename", "after_latest", "prune")
seed, job = int(sys.argv[1]), sys.argv[2]
sets = [a for a in sys.argv[3:] if a != "--set"]
rng = random.Random(seed)
point, at_save = rng.choice(POINTS), rng.randint(2, 4)
trainer = mpitrain.Trainer(job_file=job, overrides=sets)
rank, size = trainer.topo.rank, trainer.topo.size
victim = rng.randrange(size) if point == "write" else 0
saves = 0


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def armed(name):
    return point == name and saves == at_save and rank == victim


def wrap(module, attr, name, before=True):
    original = getattr(module, attr)

    def wrapper(*args, **kwargs):
        if before and armed(name):
            die()
        result = original(*args, **kwargs)
        if not before and armed(name):
            die()
        return result
    setattr(module, attr, wrapper)


original_save = save.CheckpointSaver.save


def counted_save(self, *args, **kwargs):
    global saves
    self.finish()  # the previous save commits while it still counts as the current one
    saves += 1
    if armed("write"):
        threading.Timer(rng.uniform(0.0, 0.05), die).start()
    return original_save(self, *args, **kwargs)


save.CheckpointSaver.save = counted_save
wrap(save, "write_json_durably", "before_manifest")
wrap(save, "write_json_durably", "after_manifest", before=False)
wrap(save, "fsync_path", "after_rename")
wrap(save, "set_latest", "after_latest", before=False)
wrap(save.CheckpointSaver, "_prune", "prune", before=False)
if rank == 0:
    print(f"seed {seed}: kill rank {victim} at '{point}' of save {at_save}", flush=True)
trainer.fit()
print("finished without being killed", flush=True)
