"""Ring / auto / mpi all-reduce against MPI_Allreduce(SUM) on every size and dtype.

``mpiexec -n N python ring_check.py K[,K...]`` runs every check on a communicator
of the first K ranks (split from COMM_WORLD, so not only COMM_WORLD is used) for
each K; the other ranks sleep meanwhile. Rank 0 prints ``RING_OK K <checks>`` per K,
and before it ``WIRE_ROUNDING_OK K`` once compression is shown to round (K > 1).
With more than 3 ranks (oversubscribed, slow) fewer dtype combinations are run.
"""
import hashlib
import sys
import time

import numpy as np
import torch
from mpi4py import MPI

from mpitrain.comm import device_buffers as dev
from mpitrain.comm.allreduce import AllReducer
from mpitrain.comm.ring import ring_allreduce_

WORLD = MPI.COMM_WORLD
comm, rank, n = None, 0, 0      # the communicator under test, set per K below
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
WIRE = {"fp16": torch.float16, "bf16": torch.bfloat16}
checks = 0


def fail(msg):
    print(f"rank {rank}: FAIL (K={n}) {msg}", flush=True)
    WORLD.Abort(1)


def data(numel, dtype, integer, salt=0):
    g = torch.Generator().manual_seed(1000 * rank + numel + salt)
    if integer:
        return torch.randint(-8, 9, (numel,), generator=g).to(dtype)
    return torch.randn(numel, generator=g, dtype=torch.float64).to(dtype)


def reference(x):
    ref = x.double().numpy().copy()
    comm.Allreduce(MPI.IN_PLACE, ref, op=MPI.SUM)
    return ref


def bound(x, scale=1.0, wire=None):
    """How far, per element, a float sum of ``x`` over the ranks (times ``scale``) may lie
    from the float64 reference: at most n roundings in x's dtype (n-1 additions and the
    division of a mean), n in the wire dtype and n-1 in the reference, each off by at most
    u * (sum of |x| over the ranks), u the unit roundoff, or on underflow by half the
    smallest subnormal."""
    dtypes = [d for d in (x.dtype, wire, torch.float64) if d is not None]
    u = sum(torch.finfo(d).eps / 2 for d in dtypes)
    sub = sum(torch.finfo(d).tiny * torch.finfo(d).eps / 2 for d in dtypes)
    return n * u / (1 - n * u) * reference(x.abs()) * scale + n * sub


def same_on_all_ranks(t):
    digest = hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
    return len(set(comm.allgather(digest))) == 1


def check(name, got, ref, tol=None, scale=1.0):
    """``got`` equals ``ref * scale`` exactly, or within ``tol`` (per element) if given."""
    global checks
    checks += 1
    err = np.abs(got.double().reshape(-1).numpy() - ref * scale)
    if tol is None:
        if err.any():
            fail(f"{name}: not exact, max err {err.max()}")
    elif not (err <= tol).all():   # NaN fails too
        i = int(np.argmax(~(err <= tol)))
        fail(f"{name}: err {err[i]} > bound {tol[i]} at element {i}")
    if not same_on_all_ranks(got):
        fail(f"{name}: ranks disagree bitwise")


def run_checks():
    SIZES = sorted({0, 1, n - 1, n, n + 1, 2 * n + 1, 1000, 4099, 20011})
    # 1. raw ring, many chunks and windows, integer-valued (exact) and random data
    for dtype in DTYPES:
        for numel in SIZES:
            for integer in (True, False) if (n <= 3 or dtype == torch.float32) else (True,):
                x = data(numel, dtype, integer)
                ref = reference(x)
                configs = [(1024, 2)] + ([(1 << 20, 3)] if dtype == torch.float32 else [])
                for chunk, window in configs:
                    y = x.clone()
                    ring_allreduce_(comm, y, chunk_bytes=chunk, window=window)
                    check(f"ring {dtype} n={numel} int={integer} chunk={chunk}", y, ref,
                          None if integer else bound(x))
                if not integer and numel:
                    again = x.clone()
                    ring_allreduce_(comm, again, chunk_bytes=1024, window=2)
                    if not torch.equal(again.view(torch.uint8), y.view(torch.uint8)):
                        fail(f"ring {dtype} n={numel}: repeated run differs")

    # 2. AllReducer: every algorithm, average, compression, 2-D and non-contiguous input
    reducers = {
        "ring": AllReducer(comm, "ring", chunk_bytes=1024),
        "mpi": AllReducer(comm, "mpi"),
        "auto": AllReducer(comm, "auto", crossover_bytes=4096, chunk_bytes=2048),
    }
    for name, red in reducers.items():
        for dtype in DTYPES if n <= 3 else (torch.float32, torch.bfloat16):
            for numel in (0, n + 1, 20011):
                x = data(numel, dtype, True, salt=7)
                ref = reference(x)
                y = x.clone()
                red.allreduce_(y)
                check(f"{name} sum {dtype} {numel}", y, ref)
                y = x.clone()
                red.allreduce_(y, average=True)
                check(f"{name} mean {dtype} {numel}", y, ref, bound(x, 1.0 / n), scale=1.0 / n)
        m = data(6 * 10, torch.float32, True, salt=3).view(6, 10)
        ref = reference(m.t().contiguous()).reshape(10, 6)
        mt = m.t()
        red.allreduce_(mt)
        check(f"{name} non-contiguous", mt.contiguous(), ref.reshape(-1))

    # auto really uses both paths
    large = "shm" if reducers["auto"].buffers is not None else "ring"  # shm: ranks sharing a node
    if reducers["auto"].choose(4095) != "mpi" or reducers["auto"].choose(4096) != large:
        fail("auto does not switch at the given crossover")
    if n <= 3:
        measured = AllReducer(comm, "auto")
        if len(set(comm.allgather(measured.crossover_bytes))) != 1:
            fail("measured crossover differs between ranks")

    # 3. compression: exact on small integers, close on random data, bitwise equal across ranks
    for wire in WIRE:
        red = AllReducer(comm, "ring", compress=wire, chunk_bytes=1024)
        for numel in (1, n + 1, 1000, 20011):
            x = data(numel, torch.float32, True, salt=11)
            ref = reference(x)
            y = x.clone()
            red.allreduce_(y)
            check(f"compress {wire} int {numel}", y, ref)
            x = data(numel, torch.float32, False, salt=13)
            ref = reference(x)
            y = x.clone()
            red.allreduce_(y, average=True)
            check(f"compress {wire} random {numel}", y, ref, bound(x, 1.0 / n, WIRE[wire]), scale=1.0 / n)

    # 3b. compression rounds what is sent: k + j * 2**-15 (k = 1..8, j = 1..3) loses its
    # fraction in fp16 and bf16, and every partial sum on the wire is a small positive
    # integer plus one such fraction, so the compressed sum is exactly the sum of the
    # values rounded to the wire dtype, while the uncompressed sum keeps every bit.
    if n > 1:   # with one rank nothing is sent, so nothing is rounded
        plain = AllReducer(comm, "ring", chunk_bytes=1024)
        wired = {wire: AllReducer(comm, "ring", compress=wire, chunk_bytes=1024) for wire in WIRE}
        for dtype in (torch.float32, torch.float64):
            for numel in (n + 1, 20011):
                g = torch.Generator().manual_seed(1000 * rank + numel + 17)
                x = (torch.randint(1, 9, (numel,), generator=g, dtype=dtype)
                     + torch.randint(1, 4, (numel,), generator=g, dtype=dtype) * 2.0 ** -15)
                exact = reference(x)
                y = x.clone()
                plain.allreduce_(y)
                check(f"uncompressed {dtype} {numel}", y, exact)
                for wire, wire_dtype in WIRE.items():
                    rounded = reference(x.to(wire_dtype))
                    if (rounded == exact).any():
                        fail(f"compress {wire}: test data is not changed by rounding")
                    y = x.clone()
                    wired[wire].allreduce_(y)
                    check(f"compress {wire} rounds {dtype} {numel}", y, rounded)
        if rank == 0:
            print(f"WIRE_ROUNDING_OK {n}", flush=True)

    # 4. several non-blocking reductions in flight, waited in a rank-dependent order
    red = AllReducer(comm, "auto", crossover_bytes=4096, chunk_bytes=1024)
    xs = [data(k, torch.float32, True, salt=k) for k in (10, 5000, 3, 12000, 7000)]
    refs = [reference(x) for x in xs]
    ys = [x.clone() for x in xs]
    handles = [red.iallreduce_(y) for y in ys]
    order = list(range(len(handles)))
    if rank % 2:
        order.reverse()
    for i in order:
        handles[i].wait()
    for y, ref in zip(ys, refs):
        check("iallreduce in flight", y, ref)

    # 5. staging path for device memory, with the device check faked

    real_is_dev, real_aware = dev.is_device_tensor, dev.cuda_aware
    dev.is_device_tensor = lambda t: True
    try:
        for algo in ("ring", "mpi"):
            for aware in (False, True):
                dev.cuda_aware = lambda aware=aware: aware
                red = AllReducer(comm, algo, chunk_bytes=1024)
                for numel in (1000, 700):
                    x = data(numel, torch.float32, True, salt=5)
                    ref = reference(x)
                    y = x.clone()
                    red.allreduce_(y)
                    check(f"device {algo} aware={aware}", y, ref)
                expected = 0 if aware or n == 1 else 1
                if red.stager.allocations != expected:
                    fail(f"{algo} aware={aware}: {red.stager.allocations} staging allocations, expected {expected}")
    finally:
        dev.is_device_tensor, dev.cuda_aware = real_is_dev, real_aware


def sleep_until(req):
    while not req.Test():
        time.sleep(0.002)


for k in [int(v) for v in sys.argv[1].split(",")]:
    sub = WORLD.Split(0 if WORLD.Get_rank() < k else MPI.UNDEFINED, WORLD.Get_rank())
    if sub != MPI.COMM_NULL:
        comm, rank, n, checks = sub, sub.Get_rank(), sub.Get_size(), 0
        run_checks()
        if rank == 0:
            print(f"RING_OK {k} {checks}", flush=True)
        sub.Free()
    sleep_until(WORLD.Ibarrier())
sys.exit(0)
