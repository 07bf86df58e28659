"""Check an MPI installation and a job's rank grid on the real ranks.

Every communicator of the grid is exercised: each group's membership is
gathered over the group itself and compared with the documented rank order;
the node communicator is compared with processor names; a token travels
point-to-point along every pipeline; gradients-sized buffers are all-reduced
over every data-parallel group. Rank 0 prints one line per rank.

`--raise-on-rank R` makes rank R raise after the grid is built, to check that
a failing rank ends the whole job (no hang)."""
from __future__ import annotations

import time

import numpy as np
import torch

from ..runtime import add_job_arguments, start_job

HELP = "exercise every communicator of a job's grid and report each rank"


def add_arguments(parser) -> None:
    add_job_arguments(parser, job_required=False)
    parser.add_argument("--raise-on-rank", type=int, default=-1, metavar="R",
                        help="make rank R raise an exception (checks that the job aborts)")


def _check_group(name: str, comm, expected: list[int], world_rank: int) -> None:
    members = comm.allgather(world_rank)
    if members != expected:
        raise RuntimeError(f"{name} group of world rank {world_rank} is {members}, expected {expected}")


def _check_node(topo) -> str:
    from mpi4py import MPI

    host = MPI.Get_processor_name()
    hosts = topo.world.allgather(host)
    same_host = [r for r, h in enumerate(hosts) if h == host]
    node_members = topo.node_comm.allgather(topo.rank)
    if node_members != same_host:
        raise RuntimeError(f"node communicator holds {node_members} but ranks on {host} are {same_host}")
    return host


def _pass_token(topo) -> None:
    """Send a token from stage 0 to the last stage, one hop at a time."""
    comm, stage, n = topo.pp_comm, topo.coords.pp, topo.grid.pp
    token = np.zeros(1, dtype=np.int64)
    if stage > 0:
        comm.Recv(token, source=stage - 1, tag=7)
        if token[0] != topo.pp_ranks[stage - 1]:
            raise RuntimeError(f"pipeline token from stage {stage - 1} carried {token[0]}")
    token[0] = topo.rank
    if stage < n - 1:
        comm.Send(token, dest=stage + 1, tag=7)


def _allreduce_check(topo) -> None:
    """Sum of each replica's rank over the data-parallel group, by our ring."""
    from ..comm.allreduce import AllReducer

    n = topo.grid.dp
    buf = torch.full((1 << 16,), float(topo.coords.dp + 1))
    AllReducer(topo.dp_comm, algorithm="ring").allreduce_(buf)
    expected = n * (n + 1) / 2
    if not torch.all(buf == expected):
        raise RuntimeError(f"all-reduce over the data-parallel group gave {buf[0].item()}, expected {expected}")


def run(args) -> int:
    job = start_job(args)
    topo, log = job.topo, job.log
    t0 = time.perf_counter()
    if args.raise_on_rank == topo.rank:
        raise RuntimeError(f"raised on purpose by --raise-on-rank {topo.rank}")
    _check_group("data-parallel", topo.dp_comm, topo.dp_ranks, topo.rank)
    _check_group("pipeline", topo.pp_comm, topo.pp_ranks, topo.rank)
    _check_group("tensor", topo.tp_comm, topo.tp_ranks, topo.rank)
    host = _check_node(topo)
    _pass_token(topo)
    _allreduce_check(topo)
    c = topo.coords
    row = (topo.rank, c.dp, c.pp, c.tp, host, topo.node_rank, topo.node_size, str(topo.device),
           torch.get_num_threads())
    rows = topo.world.gather(row, root=0)
    seconds = time.perf_counter() - t0
    if topo.rank == 0:
        from mpi4py import MPI

        log.info(f"MPI: {MPI.Get_library_version().splitlines()[0].strip()}; "
                 f"{topo.size} ranks = dp {topo.grid.dp} x pp {topo.grid.pp} x tp {topo.grid.tp}")
        log.info(f"{'rank':>4} {'dp':>3} {'pp':>3} {'tp':>3}  {'host':<20} {'local':>5}  device")
        for r, d, p, t, h, lr, ls, dev, th in rows:
            log.info(f"{r:>4} {d:>3} {p:>3} {t:>3}  {h:<20} {lr:>3}/{ls:<2} {dev} ({th} thread{'s' if th != 1 else ''})")
        log.info(f"selfcheck passed: groups, node communicator, pipeline point-to-point and "
                 f"ring all-reduce checked in {seconds:.2f} s")
    return 0
