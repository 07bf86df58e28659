"""Train a job whose Nth checkpoint write fails on rank 1 with ENOSPC, as on a
full disk (fault injection: the write function is wrapped, not changed).
usage: disk_full_at_save.py N JOB.toml [--set k=v ...]"""
import errno
import os
import sys

import mpitrain
import mpitrain.checkpoint.save as save

n, job = int(sys.argv[1]), sys.argv[2]
sets = [a for a in sys.argv[3:] if a != "--set"]
trainer = mpitrain.Trainer(job_file=job, overrides=sets)
original, calls = save.write_rank_file, []


def write(path, *args, **kwargs):
    calls.append(path)
    if len(calls) == n and trainer.topo.rank == 1:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return original(path, *args, **kwargs)


save.write_rank_file = write
trainer.fit()
