"""Layout equivalence, shared by the task tests: a job trained on a dp x pp layout
must give every rank the parameters a plain single-process loop reaches."""
from pathlib import Path

import numpy as np
import torch

from mpirun import run_mpi

from mpitrain import dropout
from mpitrain.data.sharding import epoch_indices
from mpitrain.jobfile import load_job
from mpitrain.train.optim import make_optimizer, make_schedule
from mpitrain.train.reference import SingleProcessModel

TOL = 1e-5


def reference_parameters(job: str, overrides: list[str]) -> dict:
    """A plain loop: the whole model in one process, tied weights as one parameter,
    one big batch per step. Returns {global name: array} (tied names share a value)."""
    cfg = load_job(job, overrides)
    task = cfg.task
    prepared = task.prepare(cfg)
    train = task.datasets(cfg, prepared)["train"]
    spec = task.model(cfg, prepared)
    model = SingleProcessModel(spec, cfg.job.seed)
    params = dict(model.global_named_parameters(remove_duplicate=False))
    unique = list(model.global_named_parameters())
    initial = {n: p.detach().clone() for n, p in params.items()}
    t = cfg.train
    steps = epoch_indices(len(train), 0, cfg.job.seed, 0, 1, t.global_batch, t.tail)
    steps = steps[:t.max_steps] if t.max_steps else steps
    opt = make_optimizer(unique, t)
    sched = make_schedule(opt, t.schedule, len(steps), int(round(t.warmup * len(steps))))
    for step, indices in enumerate(steps):
        batch = train.batch(indices)
        with dropout.scope(t.dropout, cfg.job.seed, step, indices):
            out = model(*batch[0])
        loss = spec.loss(out, batch[1]) / spec.loss.count(batch[1])
        loss.backward()
        if t.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in unique], t.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
    final = {n: p.detach().float().numpy().copy() for n, p in params.items()}
    moved = {n: float((params[n].detach() - initial[n]).abs().max()) for n in params}
    return final, moved


def train_layout(tmp: Path, job: str, overrides: list[str], dp: int, pp: int, extra=(), timeout=240, tp: int = 1,
                 env=None):
    """Run the layout under mpiexec; {rank: {global name: array}} (tensor shards joined)."""
    args = ["tests/mpi_scripts/layout_train.py", tmp, job, *extra]
    for s in [f"grid.dp={dp}", f"grid.pp={pp}", f"grid.tp={tp}", *overrides]:
        args += ["--set", s]
    n = dp * pp * tp
    result = run_mpi(n, args, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return {r: dict(np.load(tmp / f"rank-{r}.npz")) for r in range(n)}


def worst_difference(ranks: dict, reference: dict) -> float:
    """Max |difference| over every rank's every parameter; each reference name must
    be held by some rank (and every rank's names must be known)."""
    held = set()
    worst = 0.0
    for r, state in ranks.items():
        assert state, f"rank {r} holds no parameters"
        for name, value in state.items():
            assert name in reference, f"rank {r}: unknown parameter {name}"
            held.add(name)
            worst = max(worst, float(np.abs(value - reference[name]).max()))
    assert held == set(reference), f"parameters held by no rank: {sorted(set(reference) - held)[:5]}"
    return worst
