"""Data-parallel training equals single-process training at the same global batch.

``mpiexec -n N python dp_train_check.py MODE[,MODE...]`` with modes from
plain | accum | compress | pad | auto | hooks (progress from hooks, not a thread) |
groups (the world split into data-parallel groups of 2, each training on its own). Every rank also computes the single-process
reference locally; rank 0 prints ``DP_OK MODE maxdiff`` for each mode whose
parameters all match within its tolerance (fp32: 1e-5; compression: 2e-3).
"""
import sys

import torch
from mpi4py import MPI
from torch import nn

from mpitrain.data.sharding import epoch_indices, valid_mask
from mpitrain.dp.grad_sync import GradientAverager

torch.set_num_threads(1)
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
STEPS, GLOBAL_BATCH = 4, 8
mode = TOL = NUM = MICRO = None  # set per mode below


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 32)
        self.hidden = nn.Linear(32, 32)
        self.out = nn.Linear(32, 3)
        self.unused = nn.Linear(4, 4)          # never gets a gradient
        self.scale = nn.Parameter(torch.ones(32, dtype=torch.float64))  # a second dtype

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.hidden(h)) * self.scale.float()
        return self.out(h)


def build(replica):
    torch.manual_seed(1234 + replica)   # replicas start different; broadcast_parameters fixes that
    return Net()


def loss_on(model, idx, denom):
    """Sum of per-sample losses over real samples, divided by the global real count."""
    idx = torch.as_tensor(idx)
    mask = torch.as_tensor(valid_mask(idx.numpy()))
    if not mask.any():
        return sum(p.sum() * 0 for p in model.parameters() if p.requires_grad)
    real = idx[mask]
    return nn.functional.cross_entropy(model(X[real]), Y[real], reduction="sum") / denom


def reference():
    torch.manual_seed(1234)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tail = "pad" if mode == "pad" else "drop"
    steps = epoch_indices(NUM, 0, 11, 0, 1, GLOBAL_BATCH, tail)[:STEPS] + \
        epoch_indices(NUM, 1, 11, 0, 1, GLOBAL_BATCH, tail)[:STEPS]
    for idx in steps:
        opt.zero_grad()
        count = int(valid_mask(idx).sum())
        loss_on(model, idx, max(count, 1)).backward()
        opt.step()
    return model


def data_parallel():
    group = comm.Split(rank // 2, rank) if mode == "groups" else comm
    g_rank, dp = group.Get_rank(), group.Get_size()
    model = build(g_rank)
    kwargs = dict(bucket_bytes=512, first_bucket_bytes=128, algorithm="ring")
    if mode == "compress":
        kwargs["compress"] = "fp16"
    if mode == "auto":
        kwargs.update(algorithm="auto", crossover_bytes=600)
    if mode == "hooks":
        kwargs["progress"] = "hooks"
    avg = GradientAverager(list(model.named_parameters()), group, average=(mode != "pad"), **kwargs)
    avg.broadcast_parameters()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tail = "pad" if mode == "pad" else "drop"
    for epoch in (0, 1):
        steps = epoch_indices(NUM, epoch, 11, g_rank, dp, GLOBAL_BATCH, tail)[:STEPS]
        for idx in steps:
            opt.zero_grad(set_to_none=(epoch == 0))
            if mode == "pad":
                # sum-reduce: normalise by the global number of real samples of this step
                count = group.allreduce(int(valid_mask(idx).sum()))
                loss_on(model, idx, max(count, 1)).backward()
            else:
                micro = [idx[i::MICRO] for i in range(MICRO)]
                for i, part in enumerate(micro):
                    ctx = avg.no_sync() if i < MICRO - 1 else _null()
                    with ctx:
                        # local mean over the micro-batch, scaled so the group mean is the global mean
                        loss_on(model, part, len(part) * MICRO).backward()
            avg.wait()
            opt.step()
    assert avg.timings["steps"] == 2 * STEPS
    return model


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


for mode in sys.argv[1].split(","):
    TOL = {"compress": 2e-3}.get(mode, 1e-5)
    NUM = 36 if mode == "pad" else 40
    MICRO = 2 if mode == "accum" else 1
    X = torch.randn(NUM, 6, generator=torch.Generator().manual_seed(5))
    Y = torch.randint(0, 3, (NUM,), generator=torch.Generator().manual_seed(6))
    ref = reference()
    got = data_parallel()
    worst = 0.0
    for (name, a), (_, b) in zip(ref.named_parameters(), got.named_parameters()):
        worst = max(worst, float((a.detach().double() - b.detach().double()).abs().max()))
    worst = comm.allreduce(worst, op=MPI.MAX)
    if worst > TOL:
        print(f"rank {rank}: DP_FAIL {mode} maxdiff {worst:.3g} > {TOL}", flush=True)
        sys.exit(1)
    if rank == 0:
        print(f"DP_OK {mode} maxdiff {worst:.3g}", flush=True)
