"""GradientAverager edge cases; rank 0 prints ``DP_EDGE_OK`` when all hold.

* a rank whose parameters differ gets a UsageError naming it (on every rank);
* a parameter with a gradient on some ranks only is averaged with zeros elsewhere;
* a second backward before wait() is a UsageError, not silent corruption;
* the bucket layout (rebuilt after the first step) is the same on every rank.
"""
import torch
from mpi4py import MPI
from torch import nn

from mpitrain.dp.grad_sync import GradientAverager
from mpitrain.errors import UsageError

comm = MPI.COMM_WORLD
rank, n = comm.Get_rank(), comm.Get_size()


def expect(cond, msg):
    if not cond:
        print(f"rank {rank}: FAIL {msg}", flush=True)
        comm.Abort(1)


# 1. different parameters on rank 1
shape = (4, 3) if rank == 1 else (4, 4)
params = [("w", nn.Parameter(torch.zeros(shape))), ("b", nn.Parameter(torch.zeros(4)))]
try:
    GradientAverager(params, comm)
    expect(False, "no error for mismatched parameters")
except UsageError as err:
    expect("ranks 1 " in str(err) and "w" in str(err), f"unclear message: {err}")

# 2. gradient only on rank 0 for `b`
a = nn.Parameter(torch.ones(5))
b = nn.Parameter(torch.ones(7))
avg = GradientAverager([("a", a), ("b", b)], comm, algorithm="ring", bucket_bytes=16, first_bucket_bytes=8)
avg.broadcast_parameters()
for step in range(2):
    loss = (a * (rank + 1)).sum()
    if rank == 0:
        loss = loss + (b * 3).sum()
    loss.backward()
    avg.wait()
    expect(torch.allclose(a.grad, torch.full((5,), (n + 1) / 2)), f"a.grad {a.grad}")
    expect(torch.allclose(b.grad, torch.full((7,), 3.0 / n)), f"b.grad {b.grad}")
    a.grad = None
    b.grad = None

# 3. a second backward before wait()
(a.sum() + b.sum()).backward()
try:
    (a.sum() + b.sum()).backward()
    expect(False, "second backward without wait() was accepted")
except UsageError:
    pass
avg.wait()

# 4. identical layout everywhere
layout = [[name for name, _, _ in bucket.params] for bucket in avg.buckets]
expect(all(x == layout for x in comm.allgather(layout)), f"layouts differ: {layout}")
expect(avg.timings["steps"] == 3 and avg.timings["exposed_seconds"] > 0, f"timings {avg.timings}")
avg.close()

comm.Barrier()
if rank == 0:
    print("DP_EDGE_OK", flush=True)
