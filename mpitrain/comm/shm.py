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
4. barrier B: every owner is done;
5. gather: each rank copies the other owners' segments from their buffers;
6. barrier C: nobody reads this rank's buffer any more (so it may be changed).

Within one node the additions follow the ring's order exactly (segment ``s`` is
``x[s] + x[s+1] + ... + x[s-1]`` folded left, the owner's own value last), so the
shared-memory path gives the same bits as the ring on any number of ranks. Across
nodes the order is node sums first, then the ring over nodes: the same bits on
every rank and run to run, equal to the flat ring's wherever the sums are exact.
For two local ranks a reduction reads ``S`` bytes and writes ``S/2`` per rank,
and the gather copies ``S/2``: about 2.5 S of memory traffic, against about 5.5 S
through MPI messages.

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
from mpitrain.errors import UsageError

FOLD_CHUNK = 1 << 16   # elements per block when folding three or more buffers (cache-sized)


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

    def peers(self, tensor: torch.Tensor) -> list[torch.Tensor] | None:
        """Every local rank's tensor at the same place as ``tensor`` (a slice of one of
        our buffers), or None if ``tensor`` is not in shared memory."""
        ptr = tensor.data_ptr()
        for base, (win, views) in self._windows.items():
            mine = views[self.rank]
            if base <= ptr and ptr + tensor.numel() * tensor.element_size() <= base + mine.numel() * mine.element_size():
                if tensor.dtype != mine.dtype or not tensor.is_contiguous():
                    return None
                off = (ptr - base) // tensor.element_size()
                return [v[off:off + tensor.numel()] for v in views]
        return None

    def window_of(self, tensor: torch.Tensor):
        ptr = tensor.data_ptr()
        for base, (win, views) in self._windows.items():
            mine = views[self.rank]
            if base <= ptr < base + max(1, mine.numel()) * mine.element_size():
                return win
        return None

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
    if not others:
        return
    if len(others) == 1:
        own.add_(others[0])
        return
    for a in range(0, own.numel(), FOLD_CHUNK):
        b = min(a + FOLD_CHUNK, own.numel())
        acc = scratch[:b - a]
        torch.add(others[1][a:b], others[0][a:b], out=acc)
        for x in others[2:]:
            acc.add_(x[a:b])
        own[a:b].add_(acc)


class ShmCollective:
    """One shared-memory (and, with ``cross``, hierarchical) collective in flight."""

    def __init__(self, buffers: SharedBuffers, tensor: torch.Tensor, *, phase: str = "all",
                 average: bool = False, total: int | None = None, cross=None, cross_tag: int = 0,
                 cross_wire=None, chunk_bytes: int = 1 << 20, scratch=None, after=None):
        peers = buffers.peers(tensor)
        if peers is None:
            raise UsageError("shared-memory all-reduce: the tensor is not in a shared buffer; allocate it "
                             "with AllReducer.empty()")
        self.buffers, self.local, self.phase, self.average = buffers, buffers.local, phase, average
        self.win = buffers.window_of(tensor)
        self.L, self.l = buffers.size, buffers.rank
        self.peers, self.own = peers, peers[self.l]
        self.total = total or self.L
        self.bounds = segment_bounds(tensor.numel(), self.L)
        self.seg = owned_segment(self.l, self.L) if self.L > 1 else 0
        self.cross, self.cross_tag, self.cross_wire = cross, cross_tag, cross_wire
        self.chunk_bytes, self.scratch = chunk_bytes, scratch
        self.ring = None
        self.stage = "queued"
        self.done = False
        self.after = after          # the previous operation on these buffers; we start when it is done
        self.request = None

    def _start(self) -> None:
        self.after = None
        self.stage, self.request = "A", self._barrier()

    def _barrier(self):
        self.win.Sync()
        return self.local.Ibarrier()

    def _segment(self, rank_buffer: torch.Tensor, s: int) -> torch.Tensor:
        a, b = self.bounds[s]
        return rank_buffer[a:b]

    def _reduce(self) -> None:
        s = self.seg
        others = [self._segment(self.peers[(s + k) % self.L], s) for k in range(self.L - 1)]  # s, s+1, ..., l-1
        own = self._segment(self.own, s)
        tmp = None
        if len(others) > 1:
            tmp = self.scratch.get(("fold",), min(own.numel(), FOLD_CHUNK), own.dtype, own.device)
        fold_into(own, others, tmp)

    def _start_cross(self) -> None:
        if self.cross is None or self.cross.Get_size() == 1:
            return
        own = self._segment(self.own, self.seg)
        wire = self.cross_wire if self.phase != "all_gather" else None
        self.ring = RingAllreduce(self.cross, own, tag_base=self.cross_tag, average=False,
                                  chunk_bytes=self.chunk_bytes, wire_dtype=wire, scratch=self.scratch,
                                  phase=self.phase)

    def _gather(self) -> None:
        for q in range(self.L):
            if q != self.l:
                s = owned_segment(q, self.L)
                self._segment(self.own, s).copy_(self._segment(self.peers[q], s))

    def _advance(self) -> None:
        """One stage after its barrier (or ring) completed; sets the next request."""
        self.win.Sync()
        if self.stage == "A":
            if self.phase != "all_gather":
                self._reduce()
            self._start_cross()
            self.stage = "ring"
            self.request = None
            return
        if self.stage == "ring":
            if self.average and self.phase != "all_gather":
                self._segment(self.own, self.seg).div_(self.total)
            if self.phase == "reduce_scatter":
                self.stage, self.request = "C", self._barrier()
            else:
                self.stage, self.request = "B", self._barrier()
            return
        if self.stage == "B":
            self._gather()
            self.stage, self.request = "C", self._barrier()
            return
        self.done = True

    def progress(self) -> bool:
        while not self.done:
            if self.stage == "queued":
                if self.after is not None and not self.after.progress():
                    return False
                self._start()
            if self.stage == "ring":
                if self.ring is not None and not self.ring.progress():
                    return False
                self._advance()
                continue
            if not self.request.Test():
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
                if self.ring is not None:
                    self.ring.wait()
                self._advance()
                continue
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
