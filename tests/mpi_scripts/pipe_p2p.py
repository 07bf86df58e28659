"""Point-to-point checks on 2 ranks (rank 0 = stage 0, rank 1 = stage 1).

Prints "P2P-OK <check>" for each check passed; raises on failure.
"""
import torch
from mpi4py import MPI

from mpitrain.comm.p2p import P2P, P2PError, Recv, Send
from mpitrain.errors import UsageError

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
assert comm.Get_size() == 2
p2p = P2P(comm, where=f"stage {rank}")


def activations(r: int):
    """Several tensors of several dtypes; shapes change every round (dynamic padding)."""
    g = torch.Generator().manual_seed(100 + r)
    b, length = 2 + r % 3, 3 + (5 * r) % 7
    return [
        torch.randn(b, length, 6, generator=g),
        torch.randint(0, 2, (b, length), generator=g),
        torch.rand(b, length, generator=g) > 0.5,
        torch.randn(b, 4, generator=g).to(torch.bfloat16),
        torch.tensor(float(r) + 0.25, dtype=torch.float64),
        torch.empty(0, 3),
        torch.randn(6, b, generator=g).t(),  # not contiguous
    ]


def gradient(r: int):
    n = 1 << 20 if r == 0 else 1000 + r  # round 0: 4 MiB, beyond any eager limit
    return [torch.arange(n, dtype=torch.float32) * (r + 1)]


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


# 1. paired exchanges (send forward + receive backward together), varying shapes
for r in range(5):
    if rank == 0:
        (got,) = p2p.exchange(sends=[Send(1, "act", r, activations(r))], recvs=[Recv(1, "grad", r)])
        assert all(same(a, b) for a, b in zip(got, gradient(r))), f"round {r}: gradient differs"
    else:
        (got,) = p2p.exchange(sends=[Send(0, "grad", r, gradient(r))], recvs=[Recv(0, "act", r)])
        want = activations(r)
        assert len(got) == len(want), (len(got), len(want))
        for a, b in zip(got, want):
            assert same(a, b), f"round {r}: {a.dtype} {list(a.shape)} vs {b.dtype} {list(b.shape)}"
        for t in got:
            p2p.release(t)
print(f"P2P-OK rank {rank} exchange", flush=True)

# 2. receive buffers are reused once released
if rank == 0:
    for r in (5, 5):
        p2p.send(1, "act", r, activations(5))
else:
    first = p2p.recv(0, "act", 5)
    ptrs = [t.data_ptr() for t in first if t.numel()]
    for t in first:
        p2p.release(t)
    second = p2p.recv(0, "act", 5)
    assert [t.data_ptr() for t in second if t.numel()] == ptrs, "buffers were not reused"
    assert all(same(a, b) for a, b in zip(second, activations(5)))
    print(f"P2P-OK rank {rank} reuse {p2p.pool.reused}", flush=True)

# 3. a received buffer that is being sent on returns to the pool only after the send
if rank == 0:
    p2p.send(1, "grad", 9, gradient(0))
    comm.Barrier()  # meanwhile rank 1 sends the buffer back and releases it
    (back,) = p2p.recv(1, "grad", 10)
    assert same(back, gradient(0)[0])
else:
    (big,) = p2p.recv(0, "grad", 9)
    p2p.exchange(sends=[Send(0, "grad", 10, [big])])  # 4 MiB: pending until rank 0 receives
    p2p.release(big)
    key = (big.dtype, tuple(big.shape))
    pooled = lambda: any(b.data_ptr() == big.data_ptr() for b in p2p.pool.free.get(key, []))  # noqa: E731
    assert len(p2p._deferred) == 1 and not pooled(), "released while a send still reads it"
    comm.Barrier()
    p2p.flush()
    assert not p2p._deferred and pooled()
    print(f"P2P-OK rank {rank} deferred release", flush=True)

# 4. a shape the receiver does not expect names the stage and micro-batch
if rank == 0:
    p2p.send(1, "grad", 3, [torch.zeros(2, 0)])
else:
    try:
        p2p.recv(0, "grad", 3, expect=[((2, 4), torch.float32)])
    except UsageError as exc:
        msg = str(exc)
        assert "stage 1, micro-batch 3" in msg and "[2, 0]" in msg and "[2, 4]" in msg, msg
        print(f"P2P-OK rank {rank} expect: {msg}", flush=True)
    else:
        raise AssertionError("shape mismatch not detected")

# 5. a message for another micro-batch is detected
if rank == 0:
    p2p.send(1, "act", 7, [])
else:
    try:
        p2p.recv(0, "act", 6)
    except P2PError as exc:
        msg = str(exc)
        assert "micro-batch 6" in msg and "got micro-batch 7" in msg, msg
        print(f"P2P-OK rank {rank} order: {msg}", flush=True)
    else:
        raise AssertionError("micro-batch mismatch not detected")
comm.Barrier()
