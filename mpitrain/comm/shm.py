"""All-reduce through the node's shared memory, and hierarchically across nodes.

Buffers live in MPI-3 shared-memory windows (``MPI_Win_allocate_shared`` on the
group's node-local communicator, one window per buffer, every rank's segment the
same size): each rank reads its node peers' buffers directly, so a reduction
costs no message copies. A gradient bucket allocated here (``SharedBuffers.empty``)
is also the parameters' ``.grad`` storage, so filling it costs no copy either.

One collective on a buffer of ``S`` bytes over ``L`` local ranks (phases as in
``comm.ring``: ``all``, ``reduce_scatter``, ``all_gather``):

1. barrier A: every local rank's buffer is ready;
2. reduce: local rank ``l`` sums segment ``owned_segment(l, L)`` of all local
   buffers into its own buffer (reading the peers' memory);
3. across nodes (``cross`` communicator: the ranks with the same local rank,
   one per node): our ring all-reduce (or its reduce-scatter / all-gather phase)
   of that segment;
4. push: the owner writes its reduced segment into every local buffer (not for
   a reduce-scatter); within one node steps 2 and 4 run block by block, so each
   block is still in cache when it is written out;
5. barrier C: every push is done, and nobody reads this rank's buffer any more.

Ranks touch disjoint segments between the barriers, so no other synchronisation
is needed.

Within one node the additions follow the ring's order exactly (segment ``s`` is
``x[s] + x[s+1] + ... + x[s-1]`` folded left, the owner's own value last), so the
shared-memory path gives the same bits as the ring on any number of ranks. Across
nodes the order is node sums first, then the ring over nodes: the same bits on
every rank and run to run, equal to the flat ring's wherever the sums are exact.
Per rank, an all-reduce within a node reads ``S`` bytes and writes ``S`` (each
block read once, written once into every buffer): about 2 S of memory traffic,
against about 5.5 S through MPI messages and 3 S for reduce-then-gather (whose
copies also read their destination before writing it).

Synchronisation is ``MPI_Ibarrier`` on the node-local communicator with
``MPI_Win_sync`` on each side (the portable way for the unified memory model);
waits go through ``comm.waits``. ``progress()`` never blocks. Collectives on one
communicator must be posted in the same order everywhere, so an operation starts
only once the one before it (``after``) has finished: buckets in flight are
reduced one after the other, each as soon as it is ready.
"""
from __future__ import annotations

import torch
from mpi4py import MPI

from mpitrain.comm import waits
from mpitrain.comm.ring import RingAllreduce, owned_segment, segment_bounds

BLOCK_BYTES = 1 << 20   # blocks (L2-sized) stay in cache between the sum and the writes


class SharedBuffers:
    """Flat tensors in shared-memory windows over ``local`` (every rank of it must
    allocate and release the same sizes in the same order: collective)."""

    def __init__(self, local):
        self.local = local
        self.size, self.rank = local.Get_size(), local.Get_rank()
        self._windows: dict[int, tuple] = {}     # data_ptr -> (window, [tensor of each rank])

    def empty(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A zeroed flat tensor in a new shared window (collective over ``local``)."""
        itemsize = torch.empty(0, dtype=dtype).element_size()
        info = MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")
        win = MPI.Win.Allocate_shared(max(numel, 1) * itemsize, itemsize, info, comm=waits.unwrap(self.local))
        info.Free()
        win.Lock_all(MPI.MODE_NOCHECK)
        views = []
        for q in range(self.size):
            mem, _ = win.Shared_query(q)
            views.append(torch.frombuffer(mem, dtype=dtype, count=max(numel, 1))[:numel])
        mine = views[self.rank]
        mine.zero_()
        self._windows[mine.data_ptr()] = (win, views)
        return mine

    def find(self, tensor: torch.Tensor):
        """(window, every local rank's tensor at the same place as ``tensor``) for a
        contiguous slice of one of our buffers, else None."""
        ptr, nbytes = tensor.data_ptr(), tensor.numel() * tensor.element_size()
        for base, (win, views) in self._windows.items():
            mine = views[self.rank]
            if base <= ptr and ptr + nbytes <= base + mine.numel() * mine.element_size():
                if tensor.dtype != mine.dtype or not tensor.is_contiguous():
                    return None
                off = (ptr - base) // tensor.element_size()
                return win, [v[off:off + tensor.numel()] for v in views]
        return None

    def peers(self, tensor: torch.Tensor) -> list[torch.Tensor] | None:
        """Every local rank's tensor at the same place as ``tensor``, or None if
        ``tensor`` is not in shared memory."""
        found = self.find(tensor)
        return None if found is None else found[1]

    def release(self, tensor: torch.Tensor) -> None:
        """Free the window of a tensor from ``empty`` (collective; the tensor and every
        view of it must not be used afterwards)."""
        entry = self._windows.pop(tensor.data_ptr(), None)
        if entry is not None:
            entry[0].Unlock_all()
            entry[0].Free()

    def close(self) -> None:
        for ptr in list(self._windows):
            win = self._windows.pop(ptr)[0]
            win.Unlock_all()
            win.Free()


def fold_into(own: torch.Tensor, others: list[torch.Tensor], scratch: torch.Tensor | None) -> None:
    """own <- others[0] + others[1] + ... + own, folded left (the ring's order)."""
    if len(others) == 1:
        own.add_(others[0])
    elif others:
        acc = scratch[:own.numel()]
        torch.add(others[1], others[0], out=acc)
        for x in others[2:]:
            acc.add_(x)
        own.add_(acc)


class ShmCollective:
    """One shared-memory (and, with ``cross``, hierarchical) collective in flight.

    Stages: ``queued`` (until ``after`` is done), ``A`` (barrier: every buffer is
    ready), ``work`` (reduce this rank's segment; within one node also push it),
    ``ring`` (across nodes), ``C`` (barrier: every push is done).
    """

    def __init__(self, buffers: SharedBuffers, found, tensor: torch.Tensor, *, phase: str = "all",
                 average: bool = False, total: int | None = None, cross=None, cross_tag: int = 0,
                 cross_wire=None, chunk_bytes: int = 1 << 20, scratch=None, after=None):
        self.win, peers = found      # buffers.find(tensor): the tensor's window and every rank's view
        self.buffers, self.local, self.phase, self.average = buffers, buffers.local, phase, average
        self.L, self.l = buffers.size, buffers.rank
        self.peers, self.own = peers, peers[self.l]
        self.total = total or self.L
        self.bounds = segment_bounds(tensor.numel(), self.L)
        self.seg = owned_segment(self.l, self.L) if self.L > 1 else 0
        self.cross = cross if cross is not None and cross.Get_size() > 1 else None
        self.cross_tag, self.cross_wire = cross_tag, cross_wire
        self.chunk_bytes, self.scratch = chunk_bytes, scratch
        self.block = max(1, BLOCK_BYTES // tensor.element_size())
        self.ring = None
        self.stage = "queued"
        self.done = False
        self.after = after          # the previous operation on these buffers; we start when it is done
        self.request = None

    def _barrier(self):
        self.win.Sync()
        return self.local.Ibarrier()

    def _segment(self, rank_buffer: torch.Tensor, s: int) -> torch.Tensor:
        a, b = self.bounds[s]
        return rank_buffer[a:b]

    def _work(self, reduce: bool, push: bool) -> None:
        """Block by block (cache-sized): fold this rank's segment of every local buffer
        into its own (the ring's order), divide for a mean, and write the result into
        every local buffer. Each block is read from memory once and written once per
        buffer: about 2 S of memory traffic per rank for the whole all-reduce."""
        s = self.seg
        own = self._segment(self.own, s)
        order = [self._segment(self.peers[(s + k) % self.L], s) for k in range(self.L - 1)]  # s, ..., l-1
        dests = [self._segment(self.peers[q], s) for q in range(self.L) if q != self.l]
        tmp = None
        if reduce and len(order) > 1:
            tmp = self.scratch.get(("fold",), min(own.numel(), self.block), own.dtype, own.device)
        divide = reduce and self.average
        for a in range(0, own.numel(), self.block):
            b = min(a + self.block, own.numel())
            mine = own[a:b]
            if reduce:
                fold_into(mine, [x[a:b] for x in order], tmp)
                if divide and self.cross is None:
                    mine.div_(self.total)
            if push:
                for d in dests:
                    d[a:b].copy_(mine)

    def _advance(self) -> None:
        """Move on from a completed barrier (or ring); sets the next request."""
        self.win.Sync()
        if self.stage == "A":
            reduce = self.phase != "all_gather"
            if self.cross is None:
                self._work(reduce, push=self.phase != "reduce_scatter")
                self.stage, self.request = "C", self._barrier()
                return
            if reduce:
                self._work(True, push=False)
            wire = self.cross_wire if self.phase != "all_gather" else None
            self.ring = RingAllreduce(self.cross, self._segment(self.own, self.seg), tag_base=self.cross_tag,
                                      average=False, chunk_bytes=self.chunk_bytes, wire_dtype=wire,
                                      scratch=self.scratch, phase=self.phase)
            self.stage, self.request = "ring", None
            return
        if self.stage == "ring":
            if self.average and self.phase != "all_gather":
                self._segment(self.own, self.seg).div_(self.total)
            if self.phase != "reduce_scatter":
                self._work(False, push=True)
            self.stage, self.request = "C", self._barrier()
            return
        self.done = True

    def _start(self) -> None:
        self.after = None
        self.stage, self.request = "A", self._barrier()

    def progress(self) -> bool:
        while not self.done:
            if self.stage == "queued":
                if self.after is not None and not self.after.progress():
                    return False
                self._start()
            if self.stage == "ring":
                if not self.ring.progress():
                    return False
            elif not self.request.Test():
                return False
            self._advance()
        return True

    def wait(self):
        while not self.done:
            if self.stage == "queued":
                if self.after is not None:
                    self.after.wait()
                self._start()
            if self.stage == "ring":
                self.ring.wait()
            else:
                waits.wait(self.request, f"shared-memory barrier {self.stage}", getattr(self.local, "group", ""))
            self._advance()
        return self.own


def owned_range(numel: int, local_size: int, local_rank: int, cross_size: int, cross_rank: int) -> tuple[int, int]:
    """The flat range a rank holds reduced after a (hierarchical) reduce-scatter."""
    a, b = segment_bounds(numel, local_size)[owned_segment(local_rank, local_size)] if local_size > 1 else (0, numel)
    if cross_size > 1:
        c, d = segment_bounds(b - a, cross_size)[owned_segment(cross_rank, cross_size)]
        return a + c, a + d
    return a, b
