"""The one place where mpitrain waits on MPI.

Every blocking MPI call and every wait on a request goes through `call`,
`wait` or `wait_all` (communicators made by the topology are `WatchedComm`s,
which route their blocking methods through `call`). Each wait is recorded:
the operation, the group, the peer (world rank) for point-to-point messages,
where the engine is (stage, micro-batch, phase: `where`), and a per-rank
sequence number of collectives. A watchdog thread (`watchdog.py`) reads the
record of the wait in progress and ends the job when it exceeds the deadline,
naming all of it; with `check_collectives` every collective first compares
(operation, buffer size, dtype) across its group, so mismatched collectives
fail the moment they start.

Nothing here knows of models: only of operations, groups and ranks.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

# blocking communicator methods that are collectives (the rest of BLOCKING is point to point)
COLLECTIVES = {"Allreduce", "allreduce", "Allgather", "allgather", "Bcast", "bcast", "Gather", "gather",
               "Reduce", "reduce", "Barrier", "barrier", "Alltoall", "alltoall", "Scatter", "scatter",
               "Reduce_scatter", "Reduce_scatter_block", "Scan", "Exscan", "Allgatherv", "Gatherv"}
POINT_TO_POINT = {"Send", "send", "Recv", "recv", "Sendrecv", "sendrecv", "Ssend", "Probe", "probe"}
STARTS = {"Iallreduce", "Ibcast", "Iallgather", "Ibarrier", "Igather", "Ireduce", "Ireduce_scatter_block"}


@dataclass
class Wait:
    op: str
    group: str
    peer: int | None          # world rank, for point-to-point
    seq: int | None           # per-rank sequence number of collectives
    where: str
    started: float = field(default_factory=time.monotonic)
    patient: bool = False     # no deadline (e.g. rank 0 preparing data while the others wait)

    def describe(self) -> str:
        text = f"{self.op}"
        if self.seq is not None:
            text += f" (collective #{self.seq})"
        text += f" on the {self.group} group" if self.group else ""
        if self.peer is not None:
            text += f" with rank {self.peer}"
        return text + (f", {self.where}" if self.where else "")


class Monitor:
    """This process's record of what it is waiting for (read by the watchdog)."""

    def __init__(self):
        self.seq = 0
        self.current: Wait | None = None
        self.where = ""
        self.patient = 0
        self.check_collectives = False
        self.history: list[str] = []   # the last collectives, for the stall report
        self.lock = threading.Lock()

    def begin(self, op: str, group: str, peer: int | None, collective: bool) -> Wait | None:
        if self.current is not None:       # nested (a wait inside a wait): keep the outer one
            return None
        seq = None
        if collective:
            self.seq += 1
            seq = self.seq
        record = Wait(op, group, peer, seq, self.where, patient=self.patient > 0)
        self.current = record
        return record

    def end(self, record: Wait | None) -> None:
        if record is not None:
            self.current = None
            if record.seq is not None:
                self.history = (self.history + [f"#{record.seq} {record.op} ({record.group})"])[-8:]


MONITOR = Monitor()


@contextmanager
def waiting(op: str, group: str = "", peer: int | None = None, collective: bool = False):
    """Record a wait (for the watchdog) around a blocking MPI operation."""
    from . import faults

    faults.before(op)
    record = MONITOR.begin(op, group, peer, collective)
    try:
        yield record
    finally:
        MONITOR.end(record)


@contextmanager
def where(text: str):
    """Where the engine is (e.g. "step 7", then "stage 1, micro-batch 3, backward"
    inside it), for stall reports."""
    previous = MONITOR.where
    MONITOR.where = f"{previous}, {text}" if previous else text
    try:
        yield
    finally:
        MONITOR.where = previous


@contextmanager
def patient():
    """Waits inside have no deadline (one rank works alone while the others wait)."""
    MONITOR.patient += 1
    try:
        yield
    finally:
        MONITOR.patient -= 1


def wait(request, op: str, group: str = "", peer: int | None = None, status=None, yield_cpu: bool = False):
    return wait_all([request], op, group, peer, [status] if status is not None else None, yield_cpu)


def wait_all(requests, op: str, group: str = "", peer: int | None = None, statuses=None,
             yield_cpu: bool = False) -> None:
    """Complete `requests`; `yield_cpu` polls and yields the core between polls
    instead of MPI's spinning wait."""
    from mpi4py import MPI

    with waiting(op, group, peer):
        if not yield_cpu:
            if statuses is not None:
                MPI.Request.Waitall(requests, statuses)
            else:
                MPI.Request.Waitall(requests)
            return
        while not (MPI.Request.Testall(requests, statuses) if statuses is not None
                   else MPI.Request.Testall(requests)):
            os.sched_yield()


def _signature(name: str, args) -> str:
    """(operation, buffer sizes, dtypes) of a call, for `check_collectives`."""
    parts = [name]
    for a in args:
        if hasattr(a, "nbytes") and hasattr(a, "dtype"):
            parts.append(f"{a.dtype}[{a.nbytes}]")
        elif isinstance(a, (list, tuple)) and a and hasattr(a[0], "nbytes"):
            parts.append(f"{a[0].dtype}[{a[0].nbytes}]")
    return " ".join(parts)


class CollectiveMismatch(RuntimeError):
    pass


class WatchedComm:
    """An mpi4py communicator whose blocking calls go through `waiting` (named
    `group`); everything else passes through. `raw` is the communicator itself."""

    def __init__(self, comm, group: str):
        self.raw, self.group = comm, group
        self._world = None

    def __eq__(self, other):
        return self.raw == (other.raw if isinstance(other, WatchedComm) else other)

    def __hash__(self):
        return hash(id(self.raw))

    def world_rank(self, rank: int) -> int | None:
        """A rank of this group as a world rank (for messages naming peers)."""
        if rank is None or rank < 0:
            return None
        if self._world is None:
            from mpi4py import MPI
            self._world = MPI.Group.Translate_ranks(self.raw.Get_group(), list(range(self.raw.Get_size())),
                                                    MPI.COMM_WORLD.Get_group())
        return self._world[rank]

    def _checked(self, name: str, args) -> None:
        sig = _signature(name, args)
        seen = self.raw.allgather(sig)
        if len(set(seen)) > 1:
            ranks = ", ".join(f"rank {self.world_rank(i)}: {s}" for i, s in enumerate(seen))
            raise CollectiveMismatch(f"mismatched collectives on the {self.group} group at collective "
                                     f"#{MONITOR.seq + 1}: {ranks}")

    def __getattr__(self, name):
        attr = getattr(self.raw, name)
        if name in ("Split", "Split_type", "Dup", "Create"):
            def split(*a, **k):
                out = attr(*a, **k)
                from mpi4py import MPI
                group = self.group if name == "Dup" else f"{self.group} subgroup"
                return out if out == MPI.COMM_NULL else WatchedComm(out, group)
            return split
        collective = name in COLLECTIVES
        if not (collective or name in POINT_TO_POINT or name in STARTS):
            return attr

        def call(*args, **kwargs):
            if MONITOR.check_collectives and (collective or name in STARTS):
                self._checked(name, args)
            if name in STARTS:
                from . import faults
                faults.before(name)
                return attr(*args, **kwargs)
            peer = None
            if not collective:
                peer = kwargs.get("dest", kwargs.get("source"))
                if peer is None and len(args) > 1 and isinstance(args[1], int):
                    peer = args[1]
                peer = self.world_rank(peer) if isinstance(peer, int) else None
            with waiting(name, self.group, peer, collective):
                return attr(*args, **kwargs)
        return call


def unwrap(comm):
    """The mpi4py communicator under a `WatchedComm` (for calls that need the real one)."""
    return comm.raw if isinstance(comm, WatchedComm) else comm
