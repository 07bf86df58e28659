"""Pipelined ring all-reduce (sum, in place) over mpi4py point-to-point messages.

The flat tensor is split into ``n`` segments (sizes differ by at most one
element; some are empty when ``numel < n``). Reduce-scatter then all-gather run
as ``2(n-1)`` steps; at step ``t`` rank ``r`` sends segment ``(r - t) % n`` to its
right neighbour and receives segment ``(r - t - 1) % n`` from its left one.
Steps ``t < n-1`` add what arrives into the tensor; after step ``n-2`` a rank owns
the fully reduced segment ``(r + 1) % n``; later steps copy the reduced segments
around the ring.

Each segment is cut into chunks and every chunk is an independent message
(tag ``tag_base + t``), so chunk ``k`` of step ``t`` is forwarded as soon as it
has been added, while later chunks are still in flight: additions overlap
transfers and the two phases overlap each other. Receives go into a small
window of reused scratch buffers (reduce-scatter) or straight into the tensor
(all-gather); sends read the tensor itself. No full-size temporary is made.

Every rank gets the same bits: each segment is reduced once, by its owner, and
copied everywhere else. The order of additions is fixed, so repeated runs are
bitwise identical.

Phases: ``phase="reduce_scatter"`` runs only steps ``t < n-1`` (afterwards rank r
holds the reduced segment ``owned_segment(r, n) = (r + 1) % n``; the rest of the
tensor is left partly summed), ``phase="all_gather"`` only the later steps (every
rank contributes its owned segment, and receives the others). Together they are
the all-reduce (ZeRO-1 uses them apart).

Wire compression (``wire_dtype`` float16/bfloat16 on a float32/float64 tensor):
messages carry the 16-bit value, additions happen in the tensor's dtype, and
the owner rounds its reduced segment through the wire dtype, so all ranks still
agree bit for bit. Sends then need two segment-sized wire buffers (``S/n`` bytes
in all for float32).
"""
from __future__ import annotations

import torch
from mpi4py import MPI

from mpitrain.comm import waits
from mpitrain.comm.device_buffers import mpi_bytes, synchronize
from mpitrain.errors import UsageError

DEFAULT_CHUNK_BYTES = 1 << 20
DEFAULT_WINDOW = 2


def segment_bounds(numel: int, n: int) -> list[tuple[int, int]]:
    """Split ``range(numel)`` into n contiguous segments, the first ``numel % n`` one longer."""
    base, rem = divmod(numel, n)
    bounds, start = [], 0
    for i in range(n):
        end = start + base + (1 if i < rem else 0)
        bounds.append((start, end))
        start = end
    return bounds


def owned_segment(rank: int, n: int) -> int:
    """The segment a rank holds fully reduced after the reduce-scatter phase."""
    return (rank + 1) % n


PHASES = ("all", "reduce_scatter", "all_gather")


class Scratch:
    """Reused receive (and wire send) buffers, grown on demand."""

    def __init__(self):
        self._bufs: dict[tuple, torch.Tensor] = {}

    def get(self, key, numel: int, dtype: torch.dtype, device) -> torch.Tensor:
        k = (key, dtype, str(device))
        buf = self._bufs.get(k)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(max(numel, 1), dtype=dtype, device=device)
            self._bufs[k] = buf
        return buf[:numel]


class RingAllreduce:
    """One ring all-reduce in flight. Drive it with ``progress()`` (never blocks) or ``wait()``."""

    def __init__(self, comm, tensor: torch.Tensor, *, tag_base: int = 0, average: bool = False,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, window: int = DEFAULT_WINDOW,
                 wire_dtype: torch.dtype | None = None, scratch: Scratch | None = None,
                 phase: str = "all"):
        if phase not in PHASES:
            raise UsageError(f"ring_allreduce_: phase={phase!r} is unknown; use one of {', '.join(PHASES)}")
        if not tensor.is_contiguous():
            raise UsageError("ring_allreduce_: tensor is not contiguous; pass tensor.contiguous() "
                             "and copy the result back")
        self.comm, self.tensor = comm, tensor
        self.n, self.rank = comm.Get_size(), comm.Get_rank()
        self.flat = tensor.view(-1)
        self.average = average
        self.wire = wire_dtype if wire_dtype not in (None, tensor.dtype) else None
        if self.wire is not None and not tensor.dtype.is_floating_point:
            raise UsageError(f"ring_allreduce_: wire compression needs a floating tensor, got {tensor.dtype}")
        self.done = self.n == 1 or self.flat.numel() == 0
        if self.done:
            if self.average and self.n > 1 and phase != "all_gather":
                self.flat.div_(self.n)
            return
        self.tag_base = tag_base
        self.left, self.right = (self.rank - 1) % self.n, (self.rank + 1) % self.n
        self.ce = max(1, chunk_bytes // tensor.element_size())
        self.window = max(1, window)
        self.bounds = segment_bounds(self.flat.numel(), self.n)
        self.T = 2 * (self.n - 1)
        # the steps this call runs: [t0, t1)
        self.t0 = self.n - 1 if phase == "all_gather" else 0
        self.t1 = self.n - 1 if phase == "reduce_scatter" else self.T
        self.bytes = mpi_bytes(self.flat)
        self.es = tensor.element_size()
        scratch = scratch or Scratch()
        buf_dtype = self.wire or tensor.dtype
        max_seg = self.bounds[0][1] - self.bounds[0][0]
        slot_len = min(self.ce, max_seg)
        self.slots = [scratch.get(("recv", i), slot_len, buf_dtype, tensor.device) for i in range(self.window)]
        self.slot_bytes = [mpi_bytes(s) for s in self.slots]
        if self.wire is not None:
            self.wsend = [scratch.get(("send", p), max_seg, self.wire, tensor.device) for p in range(2)]
            self.wsend_bytes = [mpi_bytes(b) for b in self.wsend]
        # receive items in processing order: (step, chunk index, start, end)
        self.items = []
        for t in range(self.t0, self.t1):
            for j, (a, b) in enumerate(self._chunks((self.rank - t - 1) % self.n)):
                self.items.append((t, j, a, b))
        self.recv_reqs: list = [None] * len(self.items)
        self.send_reqs: dict[tuple[int, int], MPI.Request] = {}
        self.head = 0      # next item to process
        self.posted = 0    # next item to post a receive for
        self._start_sends()

    # -- waits (through comm.waits, for the stall watchdog) ---------------
    def _world(self, rank: int):
        return self.comm.world_rank(rank) if hasattr(self.comm, "world_rank") else None

    def _wait_send(self, request) -> None:
        waits.wait(request, "ring all-reduce send", getattr(self.comm, "group", ""), self._world(self.right))

    # -- schedule helpers -------------------------------------------------
    def _chunks(self, seg: int):
        a0, b0 = self.bounds[seg]
        return [(a, min(a + self.ce, b0)) for a in range(a0, b0, self.ce)]

    def _send(self, t: int, j: int, a: int, b: int, src_bytes=None):
        """Send chunk (t, j): elements a..b of the tensor, or ``src_bytes`` if given."""
        buf = self.bytes[a * self.es:b * self.es] if src_bytes is None else src_bytes
        self.send_reqs[(t, j)] = self.comm.Isend(buf, self.right, self.tag_base + t)

    def _wire_send(self, t: int, j: int, a: int, b: int, values: torch.Tensor) -> torch.Tensor:
        """Convert ``values`` into parity buffer t % 2 and send it as chunk (t, j); the
        buffer's previous user, chunk (t-2, j), must have been sent first."""
        prev = self.send_reqs.pop((t - 2, j), None)
        if prev is not None:
            self._wait_send(prev)
        off = j * self.ce
        dst = self.wsend[t % 2][off:off + (b - a)]
        dst.copy_(values)
        synchronize(dst)
        wb = self.wire.itemsize
        self._send(t, j, a, b, self.wsend_bytes[t % 2][off * wb:(off + b - a) * wb])
        return dst

    def _start_sends(self):
        t = self.t0
        for j, (a, b) in enumerate(self._chunks((self.rank - t) % self.n)):
            if self.wire is None:
                self._send(t, j, a, b)
            else:
                self._wire_send(t, j, a, b, self.flat[a:b])

    def _gate(self, i: int):
        """The send that must finish before item i's receive may land, or None."""
        t, j, _, _ = self.items[i]
        if self.wire is None and t >= self.n - 1:
            return self.send_reqs.get((t + 1 - self.n, j))
        return None

    def _post(self, i: int):
        t, j, a, b = self.items[i]
        if self.wire is None and t >= self.n - 1:
            buf = self.bytes[a * self.es:b * self.es]
        else:
            nb = (b - a) * self.slots[0].element_size()
            buf = self.slot_bytes[i % self.window][:nb]
        self.recv_reqs[i] = self.comm.Irecv(buf, self.left, self.tag_base + t)

    def _top_up(self, block: bool) -> bool:
        """Post receives up to the window; returns True if any was posted."""
        posted_any = False
        while self.posted < len(self.items) and self.posted < self.head + self.window:
            gate = self._gate(self.posted)
            if gate is not None:
                if block and self.posted == self.head:
                    self._wait_send(gate)
                elif not gate.Test():
                    break
                del self.send_reqs[(self.items[self.posted][0] + 1 - self.n, self.items[self.posted][1])]
            self._post(self.posted)
            self.posted += 1
            posted_any = True
        return posted_any

    def _process(self, i: int):
        t, j, a, b = self.items[i]
        dst = self.flat[a:b]
        slot = self.slots[i % self.window][:b - a]
        if t < self.n - 1:
            dst.add_(slot)
            if t == self.n - 2 and self.average:
                dst.div_(self.n)
            if self.wire is None:
                synchronize(dst)
                if t + 1 < self.t1:
                    self._send(t + 1, j, a, b)
            elif t + 1 < self.t1:
                sent = self._wire_send(t + 1, j, a, b, dst)
                if t == self.n - 2:
                    dst.copy_(sent)  # the owner keeps exactly what the others receive
            elif t == self.n - 2:   # reduce-scatter only: round as the all-gather will send it
                dst.copy_(dst.to(self.wire))
        else:
            if self.wire is not None:
                dst.copy_(slot)
            if t + 1 < self.t1:
                if self.wire is None:
                    self._send(t + 1, j, a, b)
                else:
                    self._wire_send(t + 1, j, a, b, slot)
        self.recv_reqs[i] = None

    # -- driving ----------------------------------------------------------
    def progress(self) -> bool:
        """Advance without blocking; returns True once the result is complete."""
        if self.done:
            return True
        while True:
            self._top_up(block=False)
            if self.head >= len(self.items):
                return self._finish(block=False)
            req = self.recv_reqs[self.head]
            if req is None or not req.Test():
                return False
            self._process(self.head)
            self.head += 1

    def wait(self) -> torch.Tensor:
        """Block until the result is complete; returns the tensor."""
        while not self.done:
            self._top_up(block=True)
            if self.head >= len(self.items):
                self._finish(block=True)
                break
            waits.wait(self.recv_reqs[self.head], "ring all-reduce receive", getattr(self.comm, "group", ""),
                       self._world(self.left))
            self._process(self.head)
            self.head += 1
        return self.tensor

    def _finish(self, block: bool) -> bool:
        reqs = list(self.send_reqs.values())
        if block:
            waits.wait_all(reqs, "ring all-reduce send", getattr(self.comm, "group", ""), self._world(self.right))
        elif reqs and not MPI.Request.Testall(reqs):
            return False
        self.send_reqs.clear()
        self.done = True
        return True


def ring_allreduce_(comm, tensor: torch.Tensor, *, average: bool = False,
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES, window: int = DEFAULT_WINDOW,
                    wire_dtype: torch.dtype | None = None, tag_base: int = 0,
                    scratch: Scratch | None = None) -> torch.Tensor:
    """Sum ``tensor`` over ``comm`` in place with the pipelined ring (mean if ``average``).

    Every rank must pass a contiguous tensor of the same numel and dtype (checked by
    ``AllReducer``, not here). Tags ``tag_base .. tag_base + 2(n-1) - 1`` are used on
    ``comm``; give concurrent calls on one communicator disjoint tag ranges.
    """
    return RingAllreduce(comm, tensor, tag_base=tag_base, average=average, chunk_bytes=chunk_bytes,
                         window=window, wire_dtype=wire_dtype, scratch=scratch).wait()
