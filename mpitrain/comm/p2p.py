"""Point-to-point messages of several tensors between pipeline neighbours.

A message is a fixed-size int64 header -- magic, kind, micro-batch, micro-batches
in the step, tensor count, then (dtype, ndim, dims...) per tensor -- followed by
one raw-byte payload per tensor. Shapes may change from message to message
(dynamic padding): the receiver learns them from the header, takes a buffer of
that shape from a pool, and checks what arrives (kind, micro-batch, micro-batch
count, byte counts, and optionally the shapes it expects).

`P2P.exchange` posts all sends and receives of one exchange non-blocking and
returns when its receives have completed; a send never blocks its caller, so a
caller that pairs "send forward" with "receive backward" cannot deadlock against
a neighbour doing the same. Sends complete lazily (their buffers stay referenced
until MPI is done with them; `flush` waits for all), and a received buffer given
back with `release` returns to the pool only once no pending send reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..errors import UsageError
from . import waits

MAGIC = 0x6D70_7470  # "mptp"
HEADER_WORDS = 256
KINDS = {"act": 1, "grad": 2}
KIND_NAMES = {"act": "activations", "grad": "gradients"}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128]
_CODE = {dt: i for i, dt in enumerate(DTYPES)}


class P2PError(RuntimeError):
    """A message that is not what the receiver expected (a schedule or protocol bug)."""


@dataclass
class Send:
    peer: int                      # rank in the pipeline communicator
    kind: str                      # "act" or "grad"
    mb: int                        # micro-batch index, checked by the receiver
    tensors: Sequence[torch.Tensor]
    of: int = 0                    # micro-batches in the step, checked by the receiver (0: unset)


@dataclass
class Recv:
    peer: int
    kind: str
    mb: int
    expect: Sequence[tuple[tuple[int, ...], torch.dtype]] | None = None  # shapes/dtypes to enforce
    what: str = field(default="")  # e.g. "stage 1", for error messages
    of: int = 0                    # micro-batches in the step, if the sender's must match


def _tags(kind: str) -> tuple[int, int]:
    code = KINDS[kind]
    return 100 * code + 1, 100 * code + 2  # header tag, payload tag


def byte_view(t: torch.Tensor) -> np.ndarray:
    """A uint8 numpy view of a contiguous CPU tensor's memory."""
    return t.reshape(-1).view(torch.uint8).numpy()


class BufferPool:
    """Receive buffers keyed by (dtype, shape), reused once the caller releases them."""

    def __init__(self, per_key: int = 8):
        self.per_key = per_key
        self.free: dict[tuple, list[torch.Tensor]] = {}
        self.reused = 0
        self.allocated = 0

    def get(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        bucket = self.free.get((dtype, tuple(shape)))
        if bucket:
            self.reused += 1
            return bucket.pop()
        self.allocated += 1
        return torch.empty(shape, dtype=dtype)

    def put(self, t: torch.Tensor) -> None:
        if t is None or t.device.type != "cpu" or not t.is_contiguous() or t._base is not None:
            return
        t = t.detach()
        bucket = self.free.setdefault((t.dtype, tuple(t.shape)), [])
        if len(bucket) < self.per_key and all(b.data_ptr() != t.data_ptr() for b in bucket):
            bucket.append(t)


class P2P:
    """Exchanges of multi-tensor messages over an mpi4py communicator.

    where: a short label for error messages (e.g. "stage 2"). wait_sends: complete
    an exchange's sends before returning (default: complete them lazily).
    yield_cpu: see `_wait`."""

    def __init__(self, comm, where: str = "", device: torch.device | str = "cpu",
                 pool: BufferPool | None = None, yield_cpu: bool = True,
                 wait_sends: bool = False):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.where = where or f"rank {comm.Get_rank()}"
        self.device = torch.device(device)
        self.pool = pool if pool is not None else BufferPool()
        self._headers: list[np.ndarray] = []
        self._in_flight: list = []   # (requests, header, tensors) of sends not yet completed
        self._deferred: list[torch.Tensor] = []
        self.bytes_sent = 0
        self.wait_sends = wait_sends
        self.yield_cpu = yield_cpu

    def _header(self) -> np.ndarray:
        return self._headers.pop() if self._headers else np.zeros(HEADER_WORDS, dtype=np.int64)

    def _encode(self, msg: Send, hdr: np.ndarray) -> None:
        words = [MAGIC, KINDS[msg.kind], msg.mb, msg.of, len(msg.tensors)]
        for t in msg.tensors:
            if t.dtype not in _CODE:
                raise UsageError(f"{self.where}, micro-batch {msg.mb}: cannot send a {t.dtype} tensor "
                                 f"between stages; use one of {[str(d) for d in DTYPES]}")
            words += [_CODE[t.dtype], t.dim(), *t.shape]
        if len(words) > HEADER_WORDS:
            raise UsageError(f"{self.where}, micro-batch {msg.mb}: {len(msg.tensors)} tensors with "
                             f"these shapes do not fit a {HEADER_WORDS}-word header; pass fewer "
                             "tensors between stages")
        hdr[:len(words)] = words
        hdr[len(words):] = 0

    def _decode(self, hdr: np.ndarray, msg: Recv) -> list[tuple[tuple[int, ...], torch.dtype]]:
        src = f"stage {msg.peer}" if not msg.what else msg.what
        if int(hdr[0]) != MAGIC or int(hdr[1]) != KINDS[msg.kind]:
            raise P2PError(f"{self.where}: expected {KIND_NAMES[msg.kind]} of micro-batch {msg.mb} "
                           f"from {src}, got a different message (kind code {int(hdr[1])})")
        if int(hdr[2]) != msg.mb:
            raise P2PError(f"{self.where}: expected {KIND_NAMES[msg.kind]} of micro-batch {msg.mb} "
                           f"from {src}, got micro-batch {int(hdr[2])}")
        if msg.of and int(hdr[3]) and int(hdr[3]) != msg.of:
            raise UsageError(f"{self.where}, micro-batch {msg.mb}: {src} runs {int(hdr[3])} micro-batches "
                             f"in this step but this stage runs {msg.of}; give every stage of a pipeline "
                             "the same micro-batch list")
        count, pos, specs = int(hdr[4]), 5, []
        for _ in range(count):
            dtype, ndim = DTYPES[int(hdr[pos])], int(hdr[pos + 1])
            specs.append((tuple(int(d) for d in hdr[pos + 2:pos + 2 + ndim]), dtype))
            pos += 2 + ndim
        if msg.expect is not None:
            self._check(specs, msg, src)
        return specs

    def _check(self, specs, msg: Recv, src: str) -> None:
        got = [(tuple(s), d) for s, d in specs]
        want = [(tuple(s), d) for s, d in msg.expect]
        if got == want:
            return
        if len(got) != len(want):
            detail = f"{len(got)} tensors arrived but {len(want)} were expected"
        else:
            i = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
            detail = (f"tensor {i} has shape {list(got[i][0])} ({got[i][1]}) but "
                      f"{list(want[i][0])} ({want[i][1]}) was expected")
        raise UsageError(f"{self.where}, micro-batch {msg.mb}: {KIND_NAMES[msg.kind]} from {src}: "
                         f"{detail}; make the layers at this stage boundary agree on their tensors")

    def exchange(self, sends: Sequence[Send] = (), recvs: Sequence[Recv] = ()) -> list[tuple[torch.Tensor, ...]]:
        """Post every send and receive; return the received tensor tuples (in the
        order of `recvs`) once all receives have completed.

        Sends complete lazily unless `wait_sends`: their buffers stay referenced
        here until MPI is done with them (checked at every exchange; `flush` waits
        for all). Received tensors come from the pool; hand them back with
        `release` once they are no longer needed."""
        MPI, comm = self.MPI, self.comm
        headers_in = []
        for r in recvs:
            hdr = self._header()
            headers_in.append((r, hdr, comm.Irecv([hdr, MPI.INT64_T], source=r.peer, tag=_tags(r.kind)[0])))
        posted = []
        for s in sends:
            posted.append(self._post_send(s))
        results, payloads, requests = [], [], []
        for r, hdr, req in headers_in:
            self._wait([req], op=f"pipeline receive ({KIND_NAMES[r.kind]}, micro-batch {r.mb})", peer=r.peer)
            specs = self._decode(hdr, r)
            self._headers.append(hdr)
            tensors = []
            for shape, dtype in specs:
                t = self.pool.get(shape, dtype)
                tensors.append(t)
                if t.numel():
                    buf = byte_view(t)
                    payloads.append((r, len(tensors) - 1, buf.nbytes))
                    requests.append(comm.Irecv([buf, MPI.BYTE], source=r.peer, tag=_tags(r.kind)[1]))
            results.append(tensors)
        statuses = [MPI.Status() for _ in requests]
        peer = recvs[0].peer if len(recvs) == 1 else None
        if self.wait_sends:
            self._wait(requests + [q for entry in posted for q in entry[0]],
                       statuses + [MPI.Status() for entry in posted for _ in entry[0]], op="pipeline exchange", peer=peer)
        else:
            self._wait(requests, statuses, op="pipeline receive", peer=peer)
        for (r, i, nbytes), st in zip(payloads, statuses):
            got = st.Get_count(MPI.BYTE)
            if got != nbytes:
                raise P2PError(f"{self.where}: {KIND_NAMES[r.kind]} of micro-batch {r.mb} from stage "
                               f"{r.peer}: tensor {i} carried {got} bytes, expected {nbytes}")
        self._reap()
        if self.device.type != "cpu":
            results = [[t.to(self.device, non_blocking=False) for t in ts] for ts in results]
        return [tuple(ts) for ts in results]

    def _post_send(self, msg: Send):
        MPI, comm = self.MPI, self.comm
        hdr = self._header()
        self._encode(msg, hdr)
        htag, dtag = _tags(msg.kind)
        requests = [comm.Isend([hdr, MPI.INT64_T], dest=msg.peer, tag=htag)]
        held = []
        for t in msg.tensors:
            t = t.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            t = t.contiguous()
            if t.numel() == 0:
                continue
            buf = byte_view(t)
            held.append(t)
            self.bytes_sent += buf.nbytes
            requests.append(comm.Isend([buf, MPI.BYTE], dest=msg.peer, tag=dtag))
        entry = (requests, hdr, held)
        self._in_flight.append(entry)
        return entry

    def _reap(self) -> None:
        """Forget sends MPI has finished with; pool buffers whose release waited on them."""
        still = []
        for entry in self._in_flight:
            requests, hdr, _ = entry
            if self.MPI.Request.Testall(requests):
                self._headers.append(hdr)
            else:
                still.append(entry)
        self._in_flight = still
        if self._deferred:
            busy = self._sending_ptrs()
            waiting = self._deferred
            self._deferred = []
            for t in waiting:
                self.release(t, busy)

    def _sending_ptrs(self) -> set[int]:
        return {t.untyped_storage().data_ptr() for _, _, held in self._in_flight for t in held}

    def release(self, t: torch.Tensor | None, busy: set[int] | None = None) -> None:
        """Give a received buffer back to the pool (later, if a send still reads it)."""
        if t is None:
            return
        busy = self._sending_ptrs() if busy is None else busy
        if t.untyped_storage().data_ptr() in busy:
            self._deferred.append(t)
        else:
            self.pool.put(t)

    def flush(self) -> None:
        """Wait until every send has completed."""
        requests = [q for requests, _, _ in self._in_flight for q in requests]
        if requests:
            self._wait(requests, op="pipeline send")
        self._reap()

    def _wait(self, requests, statuses=None, op: str = "pipeline receive", peer=None) -> None:
        """Complete `requests` (through `comm.waits`, which records the wait for the
        stall watchdog). With `yield_cpu` (default), poll and yield the core between
        polls: a rank waiting for its neighbour then leaves the core to other work
        (another rank, a data loader, another job), at the cost of a system call per
        poll; otherwise MPI's own (spinning) wait."""
        comm = self.comm
        peer = comm.world_rank(peer) if peer is not None and hasattr(comm, "world_rank") else None
        waits.wait_all(requests, op, getattr(comm, "group", ""), peer, statuses, self.yield_cpu)

    def send(self, peer: int, kind: str, mb: int, tensors: Sequence[torch.Tensor]) -> None:
        self.exchange(sends=[Send(peer, kind, mb, tensors)])
        self.flush()

    def recv(self, peer: int, kind: str, mb: int, expect=None) -> tuple[torch.Tensor, ...]:
        return self.exchange(recvs=[Recv(peer, kind, mb, expect)])[0]
