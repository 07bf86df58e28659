"""Shared-memory (and hierarchical) all-reduce against our flat ring, on every phase.

Prints SHM_OK <local size> <cross size> on success, FAIL ... otherwise. With
MPIR_CVAR_NUM_CLIQUES=K MPICH splits the local processes into K simulated nodes.
"""
import sys

import torch
from mpi4py import MPI

from mpitrain.comm.allreduce import AllReducer
from mpitrain.dp.grad_sync import GradientAverager
from mpitrain.errors import UsageError

comm = MPI.COMM_WORLD
rank = comm.Get_rank()


def fail(msg):
    print(f"FAIL rank {rank}: {msg}", flush=True)
    comm.Abort(1)


if sys.argv[1:] == ["uneven"]:
    try:
        AllReducer(comm, "shm")
    except UsageError as e:
        print(f"UNEVEN {e}\n", end="", flush=True)
    sys.exit(0)

shm = AllReducer(comm, "shm", chunk_bytes=4096)
ring = AllReducer(comm, "ring", chunk_bytes=4096)
if shm.buffers is None:
    fail("no shared memory between the ranks of one node")
hier = shm.cross is not None
gen = torch.Generator().manual_seed(100 + rank)
for dtype in (torch.float32, torch.float64):
    for numel in (1, 2, 5, 1000, 70001):
        noisy = torch.randn(numel, generator=gen, dtype=dtype) * 10 ** torch.randint(-3, 4, (numel,), generator=gen)
        exact = torch.randint(-4096, 4096, (numel,), generator=gen).to(dtype) / 128  # every order sums exactly
        for kind, data in (("noisy", noisy), ("exact", exact)):
            same_bits = kind == "exact" or not hier
            for average in (False, True):
                ref = data.clone()
                ring.allreduce_(ref, average=average)
                buf = shm.empty(numel, dtype)
                results = []
                for _ in range(2):                           # run to run: the same bits
                    buf.copy_(data)
                    shm.iallreduce_(buf, average=average).wait()
                    results.append(buf.clone())
                if not torch.equal(results[0], results[1]):
                    fail(f"{kind} {dtype} {numel}: two runs differ")
                if same_bits and not torch.equal(buf, ref):
                    fail(f"{kind} {dtype} {numel} average={average}: not the ring's bits")
                bound = data.abs()
                ring.allreduce_(bound, average=average)   # sums in two orders differ by < n eps sum|x|
                bound *= comm.Get_size() * torch.finfo(dtype).eps
                if not bool(((buf - ref).abs() <= bound).all()):
                    fail(f"{kind} {dtype} {numel}: off the ring by {(buf - ref).abs().max()}")
                if any(not torch.equal(v, buf) for v in comm.allgather(buf.clone())):
                    fail(f"{kind} {dtype} {numel}: ranks disagree")
                # the two phases apart: owned ranges tile the tensor; reduced slice, then gather
                buf.copy_(data)
                shm.ireduce_scatter_(buf, average=average).wait()
                a, b = shm.owned(numel)
                if same_bits and not torch.equal(buf[a:b], ref[a:b]):
                    fail(f"reduce-scatter {kind} {numel}: owned slice [{a}, {b}) wrong")
                spans, pos = sorted(comm.allgather((a, b))), 0
                for s0, s1 in spans:
                    if s0 != pos:
                        fail(f"owned ranges {spans} do not tile {numel}")
                    pos = s1
                if pos != numel:
                    fail(f"owned ranges {spans} do not cover {numel}")
                buf.fill_(-1.0)
                buf[a:b] = ref[a:b]
                shm.iall_gather_(buf).wait()
                if not torch.equal(buf, ref):
                    fail(f"all-gather {kind} {numel}: wrong")
                shm.release(buf)

# gradient buckets: p.grad is a view of shared memory and equals the ring averager's
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.Tanh(), torch.nn.Linear(30, 5))
twin = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.Tanh(), torch.nn.Linear(30, 5))
twin.load_state_dict(model.state_dict())
avg_shm = GradientAverager(list(model.named_parameters()), comm, algorithm="shm", bucket_bytes=2048,
                           first_bucket_bytes=1024)
avg_ring = GradientAverager(list(twin.named_parameters()), comm, algorithm="ring", bucket_bytes=2048,
                            first_bucket_bytes=1024)
x = torch.randn(8, 40, generator=gen)
for step in range(3):
    for m, avg in ((model, avg_shm), (twin, avg_ring)):
        m.zero_grad(set_to_none=False)
        m(x * (step + 1)).pow(2).sum().backward()
        avg.wait()
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        if avg_shm.reducer.buffers.peers(p.grad) is None:
            fail(f"{n}.grad is not in shared memory")
        if not hier and not torch.equal(p.grad, q.grad):
            fail(f"step {step}: {n}.grad differs from the ring averager's")
        if not torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6 * float(q.grad.abs().max())):
            fail(f"step {step}: {n}.grad is off the ring averager's by {(p.grad - q.grad).abs().max()} of {q.grad.abs().max()}")
local_size = shm.local_size
avg_shm.close()
avg_ring.close()
shm.close()
ring.close()
print(f"SHM_OK {local_size} {comm.Get_size()} {'hierarchical' if hier else 'node'}", flush=True)
