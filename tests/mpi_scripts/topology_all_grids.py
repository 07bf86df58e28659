"""Under mpiexec -n 8: for W = 1..8, build every (dp, pp) grid on the first W ranks
and check each communicator's membership against mpitrain.grid's documented order."""
import sys

from mpi4py import MPI

from mpitrain.device import cpu_threads
from mpitrain.grid import factorisations
from mpitrain.topology import build_topology

world = MPI.COMM_WORLD
rank = world.Get_rank()
checked = 0
for w in range(1, world.Get_size() + 1):
    sub = world.Split(0 if rank < w else MPI.UNDEFINED, key=rank)
    if sub == MPI.COMM_NULL:
        continue
    for grid in factorisations(w):
        topo = build_topology(grid, sub)
        for name, comm, expected in (("dp", topo.dp_comm, topo.dp_ranks),
                                     ("pp", topo.pp_comm, topo.pp_ranks),
                                     ("tp", topo.tp_comm, topo.tp_ranks)):
            got = comm.allgather(topo.rank)
            assert got == expected, (w, grid, name, got, expected)
            assert comm.Get_rank() == expected.index(topo.rank)
        assert topo.node_comm.allgather(topo.rank) == list(range(w)), "one node: all ranks share it"
        assert topo.node_rank == topo.rank and topo.node_size == w
        assert topo.device.type == "cpu"
        import torch
        assert torch.get_num_threads() == cpu_threads(w)
        assert topo.is_first_stage == (topo.coords.pp == 0)
        assert topo.is_last_stage == (topo.coords.pp == grid.pp - 1)
        topo.free()
        checked += 1
    sub.Free()
print(f"rank {rank} checked {checked} grids", flush=True)
sys.exit(0)
