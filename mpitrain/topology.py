"""Communicators for a rank grid: data-parallel, pipeline, tensor and node groups."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .comm.waits import WatchedComm
from .device import bind
from .errors import ConfigError
from .grid import Coords, Grid, coords_of, dp_group, pp_group, tp_group


@dataclass
class Topology:
    grid: Grid
    world: object            # the parent communicator (usually COMM_WORLD)
    rank: int
    size: int
    coords: Coords
    dp_comm: object
    pp_comm: object
    tp_comm: object
    node_comm: object
    dp_ranks: list[int]
    pp_ranks: list[int]
    tp_ranks: list[int]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def node_rank(self) -> int:
        return self.node_comm.Get_rank()

    @property
    def node_size(self) -> int:
        return self.node_comm.Get_size()

    @property
    def is_first_stage(self) -> bool:
        return self.coords.pp == 0

    @property
    def is_last_stage(self) -> bool:
        return self.coords.pp == self.grid.pp - 1

    def describe(self) -> str:
        c = self.coords
        return f"rank {self.rank} (dp={c.dp}, pp={c.pp}, tp={c.tp})"

    def free(self) -> None:
        for comm in (self.dp_comm, self.pp_comm, self.tp_comm, self.node_comm):
            comm.Free()


def check_world(grid: Grid, world_size: int, where: str = "job") -> None:
    if grid.size != world_size:
        raise ConfigError(
            f"{where}: [grid] dp*pp*tp = {grid.dp}*{grid.pp}*{grid.tp} = {grid.size} but the job "
            f"has {world_size} ranks; start {grid.size} ranks (mpirun -n {grid.size}) or set "
            f"the grid so the product is {world_size}")


def build_topology(grid: Grid, comm=None, device: str = "auto", threads: int = 0) -> Topology:
    """Split `comm` (default COMM_WORLD) into the grid's groups and bind a device.
    Collective: every rank of `comm` must call it with the same grid."""
    from mpi4py import MPI

    comm = comm if comm is not None else MPI.COMM_WORLD
    if not isinstance(comm, WatchedComm):
        comm = WatchedComm(comm, "world")  # every blocking call recorded for the stall watchdog
    rank, size = comm.Get_rank(), comm.Get_size()
    check_world(grid, size)
    c = coords_of(rank, grid)
    raw = comm.raw
    dp_comm = WatchedComm(raw.Split(color=c.pp * grid.tp + c.tp, key=c.dp), "data-parallel")
    pp_comm = WatchedComm(raw.Split(color=c.dp * grid.tp + c.tp, key=c.pp), "pipeline")
    tp_comm = WatchedComm(raw.Split(color=c.pp * grid.dp + c.dp, key=c.tp), "tensor")
    node_comm = WatchedComm(raw.Split_type(MPI.COMM_TYPE_SHARED, key=rank), "node")
    topo = Topology(grid=grid, world=comm, rank=rank, size=size, coords=c,
                    dp_comm=dp_comm, pp_comm=pp_comm, tp_comm=tp_comm, node_comm=node_comm,
                    dp_ranks=dp_group(rank, grid), pp_ranks=pp_group(rank, grid),
                    tp_ranks=tp_group(rank, grid))
    topo.device = bind(device, topo.node_rank, topo.node_size, threads)
    return topo
