"""Benchmark: all-reduce algorithms on the same ranks, nccl-tests style.

    mpirun -n N python -m mpitrain bench allreduce [--sizes 4KiB,1MiB,64MiB] [--dtype float32]
                                                   [--iters 10] [--json FILE]

For every size, in the same run and on the same ranks: ``shm`` (mpitrain's
shared-memory all-reduce on a buffer from ``AllReducer.empty``, as gradient
buckets are; hierarchical when the ranks span nodes), ``ring`` (mpitrain's ring),
``auto`` (MPI below the crossover measured at start-up, shm or ring above it, on a
shared buffer), ``mpi`` (MPI_Allreduce) and ``gloo`` (torch.distributed all_reduce).
``shm`` is left out when no two ranks share a node. The algorithms take
turns iteration by iteration, in a shuffled order, so background load and
after-effects of the previous operation hit all of them alike. Per
iteration the slowest rank's time counts; the table shows the median and the
minimum over iterations:

    algbw = S / t        busbw = algbw * 2(n-1)/n        (GB/s, 1 GB = 1e9 bytes)

The single-core memcpy rate of rank 0 (64 MiB, the other ranks sleeping) is printed
as the hardware reference.
mpitrain's reducers run with ``check=False`` here (no per-call size agreement),
like MPI_Allreduce itself.
"""
from __future__ import annotations

import json
import random
import re
import socket
import statistics
import time

import numpy as np
import torch
from mpi4py import MPI

from mpitrain.comm.allreduce import AllReducer
from mpitrain.comm.ring import DEFAULT_CHUNK_BYTES
from mpitrain.errors import UsageError

HELP = "all-reduce: mpitrain shm / ring / auto vs MPI_Allreduce vs gloo"
DEFAULT_SIZES = "4KiB,16KiB,64KiB,256KiB,1MiB,4MiB,16MiB,64MiB,256MiB"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
ALGOS = ("shm", "ring", "auto", "mpi", "gloo")
SHARED = ("shm", "auto")          # their tensors live in the reducer's shared memory
_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30,
          "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"--sizes: cannot read {text!r}; write sizes like 4KiB, 1MiB, 64MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_size(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return f"{nbytes}B"


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated sizes, e.g. 4KiB,1MiB,64MiB")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--iters", type=int, default=20,
                        help="timed iterations per size and algorithm (5x that below 1 MiB)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--algos", default=",".join(ALGOS), help="subset of shm,ring,auto,mpi,gloo")
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES, help="ring chunk size")
    parser.add_argument("--crossover-bytes", type=int, default=None,
                        help="auto's ring/mpi crossover (default: measured at start-up)")
    parser.add_argument("--json", default=None, help="write result rows to this file (rank 0)")


def memcpy_gbps(nbytes: int = 64 << 20, reps: int = 5) -> float:
    """Single-core copy rate (bytes copied per second) of this process."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.ones(nbytes, dtype=np.uint8)
    best = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best.append(time.perf_counter() - t0)
    return nbytes / statistics.median(best[1:]) / 1e9


def idle_barrier(comm, poll: float = 1e-3) -> None:
    """A barrier that sleeps instead of spinning, so waiting ranks leave the CPU alone."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(poll)


def init_gloo(comm):
    """torch.distributed (gloo) on the same ranks, rendezvous through MPI."""
    import torch.distributed as dist
    if dist.is_initialized():
        return dist
    addr, port = None, None
    if comm.Get_rank() == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        addr = "127.0.0.1" if comm.Get_size() == 1 else socket.gethostname()
    addr, port = comm.bcast((addr, port), root=0)
    hosts = set(comm.allgather(socket.gethostname()))
    if len(hosts) == 1:
        addr = "127.0.0.1"
    dist.init_process_group("gloo", init_method=f"tcp://{addr}:{port}", rank=comm.Get_rank(),
                            world_size=comm.Get_size())
    return dist


def run(args) -> int:
    comm = MPI.COMM_WORLD
    rank, n = comm.Get_rank(), comm.Get_size()
    torch.set_num_threads(1)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    bad = [a for a in algos if a not in ALGOS]
    if bad:
        raise UsageError(f"--algos: unknown {', '.join(bad)}; choose from {', '.join(ALGOS)}")
    if args.iters < 1:
        raise UsageError("--iters: must be >= 1")
    dtype = DTYPES[args.dtype]
    esize = torch.empty(0, dtype=dtype).element_size()

    reducers = {
        "ring": AllReducer(comm, "ring", chunk_bytes=args.chunk_bytes, check=False),
        "mpi": AllReducer(comm, "mpi", check=False),
    }
    if "auto" in algos:
        reducers["auto"] = AllReducer(comm, "auto", crossover_bytes=args.crossover_bytes,
                                      chunk_bytes=args.chunk_bytes, check=False)
    if "shm" in algos:
        reducers["shm"] = AllReducer(comm, "auto", crossover_bytes=0, chunk_bytes=args.chunk_bytes, check=False)
        if reducers["shm"].buffers is None:
            algos.remove("shm")
            if rank == 0:
                print("# shm: no two ranks share a node; left out", flush=True)
    dist = init_gloo(comm) if "gloo" in algos else None
    ref = memcpy_gbps() if rank == 0 else 0.0
    idle_barrier(comm)

    def one(algo, tensor):
        if algo == "gloo":
            dist.all_reduce(tensor)
        else:
            reducers[algo].allreduce_(tensor)

    rows = []
    if rank == 0:
        print(f"# allreduce: {n} ranks, dtype {args.dtype}, {args.iters} iterations (x5 below 1MiB; median / min), "
              f"chunk {format_size(args.chunk_bytes)}", flush=True)
        if "auto" in reducers:
            print(f"# auto crossover: {format_size(reducers['auto'].crossover_bytes)}"
                  f" ({'given' if args.crossover_bytes is not None else 'measured'})", flush=True)
        if "shm" in algos:
            red = reducers["shm"]
            nodes = 1 if red.cross is None else red.cross.Get_size()
            print(f"# shm: {red.local_size} ranks per node, {nodes} node(s)"
                  f"{': hierarchical (ring between nodes)' if nodes > 1 else ''}", flush=True)
        print(f"# memcpy (1 core, rank 0): {ref:.2f} GB/s", flush=True)
        print(f"{'size':>8} {'algo':>5} {'time_us':>11} {'min_us':>11} {'algbw':>7} {'busbw':>7}"
              f" {'busbw_max':>9}", flush=True)
    for nbytes in sizes:
        numel = max(1, nbytes // esize)
        plain = torch.ones(numel, dtype=dtype)
        tensors = {a: reducers[a].empty(numel, dtype) if a in SHARED else plain for a in algos}
        times = {a: [] for a in algos}
        iters = args.iters * (5 if nbytes < (1 << 20) else 1)   # microsecond runs are noisier
        for it in range(args.warmup + iters):
            order = list(algos)
            random.Random(it).shuffle(order)      # same order on every rank
            for algo in order:
                tensors[algo].fill_(1)
                comm.Barrier()
                t0 = time.perf_counter()
                one(algo, tensors[algo])
                dt = time.perf_counter() - t0
                if it >= args.warmup:
                    times[algo].append(dt)
        for algo in algos:
            ts = np.array(times[algo])
            comm.Allreduce(MPI.IN_PLACE, ts, op=MPI.MAX)
            med, best = float(np.median(ts)), float(ts.min())
            nb = numel * esize
            algbw = nb / med / 1e9
            busbw = algbw * 2 * (n - 1) / n
            rows.append({"algo": algo, "bytes": nb, "ranks": n, "dtype": args.dtype, "seconds": med,
                         "algbw_gbps": algbw, "busbw_gbps": busbw, "min_seconds": best})
            if rank == 0:
                print(f"{format_size(nb):>8} {algo:>5} {med * 1e6:11.1f} {best * 1e6:11.1f} {algbw:7.2f}"
                      f" {busbw:7.2f} {nb / best / 1e9 * 2 * (n - 1) / n:9.2f}", flush=True)
        for a in SHARED:
            if a in tensors:
                reducers[a].release(tensors[a])
        del tensors, plain
    if rank == 0:
        rows.append({"algo": "memcpy", "bytes": 64 << 20, "ranks": 1, "dtype": "uint8",
                     "seconds": (64 << 20) / ref / 1e9, "algbw_gbps": ref, "busbw_gbps": ref})
        summarize(rows, ref)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    for r in reducers.values():
        r.close()
    if dist is not None:
        dist.destroy_process_group()
    return 0


def summarize(rows, memcpy: float) -> None:
    """Print the ratios the targets are stated in (busbw ratios equal algbw ratios)."""
    by = {(r["algo"], r["bytes"]): r for r in rows}
    print("# summary (ratios of medians)")
    for nbytes in sorted({r["bytes"] for r in rows if r["algo"] != "memcpy"}):
        parts = []
        ring, shm = by.get(("ring", nbytes)), by.get(("shm", nbytes))
        if shm and ring:
            parts.append(f"shm/ring {shm['algbw_gbps'] / ring['algbw_gbps']:.2f}x")
        for other in ("mpi", "gloo"):
            o = by.get((other, nbytes))
            if ring and o:
                parts.append(f"ring/{other} {ring['algbw_gbps'] / o['algbw_gbps']:.2f}x")
        auto = by.get(("auto", nbytes))
        rivals = {a: by[(a, nbytes)]["algbw_gbps"] for a in ("shm", "ring", "mpi") if (a, nbytes) in by}
        if auto and rivals:
            parts.append(f"auto/best({','.join(rivals)}) {auto['algbw_gbps'] / max(rivals.values()):.2f}")
        for name, row in (("shm", shm), ("ring", ring)):
            if row and row["ranks"] > 1:
                parts.append(f"{name} busbw/memcpy {row['busbw_gbps'] / memcpy:.0%}")
        print(f"# {format_size(nbytes):>8}: " + ", ".join(parts), flush=True)
