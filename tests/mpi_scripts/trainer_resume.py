"""Stop a run after k steps, take the Trainer's state and the parameters, rebuild
a fresh Trainer, restore both, and finish: every rank's parameters must be
bitwise those of the uninterrupted run (dropout on, so the RNG counts too).
usage: trainer_resume.py JOB.toml K [--set k=v ...]"""
import sys

import torch

import mpitrain
from mpitrain.train.loop import run_epoch

job, k = sys.argv[1], int(sys.argv[2])
sets = [a for a in sys.argv[3:] if a != "--set"]
first = mpitrain.Trainer(job_file=job, overrides=sets)
run_epoch(first, 0, stop=k)
state, params = first.state_dict(), first.model.local_state()
assert state["step"] == k and state["step_in_epoch"] == k and state["optimizer"]["state"]
run_epoch(first, 0, start=k)
straight = first.model.local_state()
first.close()

second = mpitrain.Trainer(job_file=job, overrides=sets)
second.model.load_local_state(params)
second.load_state_dict(state)
run_epoch(second, 0, start=second.step_in_epoch)
resumed = second.model.local_state()
second.close()
assert straight.keys() == resumed.keys()
bad = [n for n in straight if not torch.equal(straight[n], resumed[n])]
assert not bad, f"rank {second.topo.rank}: resumed parameters differ: {bad[:3]}"
assert not all(torch.equal(params[n], straight[n]) for n in params), "nothing trained after step k"
print(f"rank {second.topo.rank}: resumed bitwise after {k} steps", flush=True)
