"""A rank passing a different size or dtype gets a UsageError on every rank, for
each algorithm, and the reducer stays usable. Rank 0 prints, for every rank, one
``MISMATCH_RAISED <case> <message>`` line per case, then ``MISMATCH_DONE``.
"""
import torch
from mpi4py import MPI

from mpitrain.comm.allreduce import AllReducer
from mpitrain.errors import UsageError

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
lines = []
for what, algo in (("size", "ring"), ("dtype", "ring"), ("size", "mpi"), ("dtype", "auto")):
    red = AllReducer(comm, algo, crossover_bytes=0 if algo == "ring" else 1 << 30)
    numel = 1000 + (1 if what == "size" and rank == 1 else 0)
    dtype = torch.float64 if what == "dtype" and rank == 1 else torch.float32
    try:
        red.allreduce_(torch.ones(numel, dtype=dtype))
    except UsageError as err:
        lines.append(f"MISMATCH_RAISED {what}/{algo} {err}")
    else:
        lines.append(f"NO_ERROR {what}/{algo}")
    x = torch.ones(10)
    red.allreduce_(x)
    assert float(x[0]) == comm.Get_size()
    red.close()
everyone = comm.gather(lines, root=0)
if rank == 0:
    for mine in everyone:
        print("\n".join(mine))
    print("MISMATCH_DONE", flush=True)
