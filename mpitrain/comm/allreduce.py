"""All-reduce dispatch per communicator: shared memory, our ring, the MPI library's,
or by size.

``AllReducer(comm, algorithm)``:

* ``"shm"``: ``mpitrain.comm.shm``: through the node's shared memory for tensors
  allocated with ``empty()`` (gradient buckets are); when the group spans nodes,
  hierarchically (shared memory inside each node, our ring across nodes between
  the ranks holding the same segment). Needs the same number of group ranks on
  every node. Other tensors go through the ring.
* ``"ring"``: ``mpitrain.comm.ring`` (pipelined, in place; optional wire compression).
* ``"mpi"``: ``MPI_Allreduce`` / ``MPI_Iallreduce`` in place (16-bit floats through a
  user-defined op, on host memory).
* ``"auto"``: ``mpi`` below ``crossover_bytes``; at or above it ``shm`` when the
  group has more than one rank on a node (same count on every node), else ``ring``.
  The crossover is given (job file) or measured once, here, on this communicator:
  both algorithms are timed at a few sizes, the slowest rank's time counts, and
  every rank derives the same crossover from the same numbers.

Compression (``compress="fp16"|"bf16"``) applies to ring transfers of float32/float64
tensors (with ``shm``: those between nodes): messages carry 16-bit values, the sums
are formed in the tensor's dtype. Messages that go through ``mpi`` are not compressed.

With ``check=True`` every call first agrees on (numel, dtype) with one small
``MPI_Allreduce``; a rank passing something different gets a ``UsageError`` on
every rank instead of a hang. Callers that fixed the layout beforehand (e.g.
``GradientAverager``) turn it off.

Device (CUDA) tensors go to MPI directly when it is CUDA-aware; otherwise they are
copied into a reused pinned host buffer when the reduction starts and back when it
is waited for (``device_buffers``).

``iallreduce_`` returns a handle whose ``wait()`` completes it; ring transfers also
advance whenever ``progress()`` is called (or any handle of this reducer waits). All
ranks must start their all-reduces on one reducer in the same order.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from mpi4py import MPI

from mpitrain.comm import device_buffers as dev
from mpitrain.comm.crossover import PROBE_BYTES, measure_crossover
from mpitrain.comm.mpi_ops import MpiAllreduce, mpi_allreduce_
from mpitrain.comm.shm import SharedBuffers, ShmCollective, owned_range
from mpitrain.comm.ring import (DEFAULT_CHUNK_BYTES, DEFAULT_WINDOW, RingAllreduce, Scratch, owned_segment,
                                 segment_bounds)
from mpitrain.errors import UsageError

ALGORITHMS = ("shm", "ring", "mpi", "auto")
COMPRESS = {None: None, "none": None, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_CODES = {torch.float32: 1, torch.float64: 2, torch.float16: 3, torch.bfloat16: 4,
               torch.int32: 5, torch.int64: 6}


class Handle:
    """An all-reduce in flight; ``wait()`` returns the reduced tensor."""

    def __init__(self, reducer, op, tensor, finish=None, scratch=None):
        self._reducer, self._op, self.tensor, self._finish = reducer, op, tensor, finish
        self._scratch = scratch
        self.done = op is None
        self.started = self.finished = time.perf_counter()  # finished: set again when it completes

    def test(self) -> bool:
        if not self.done:
            self.done = self._op.progress()
            if self.done:
                self._complete()
        return self.done

    def wait(self) -> torch.Tensor:
        if not self.done:
            self._reducer._wait_for(self)
        return self.tensor

    def _complete(self):
        self.done = True
        self.finished = time.perf_counter()
        self._reducer._active.remove(self)
        if self._scratch is not None:
            self._reducer._scratch_free.append(self._scratch)
            self._scratch = None
        if self._finish is not None:
            self._finish()
            self._finish = None


class AllReducer:
    """In-place all-reduce on one communicator (its own duplicate, so tags never clash)."""

    def __init__(self, comm, algorithm: str = "auto", crossover_bytes: int | None = None,
                 compress: str | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 window: int = DEFAULT_WINDOW, check: bool = True):
        if algorithm not in ALGORITHMS:
            raise UsageError(f"AllReducer: algorithm={algorithm!r} is unknown; use one of {', '.join(ALGORITHMS)}")
        if compress not in COMPRESS:
            raise UsageError(f"AllReducer: compress={compress!r} is unknown; use fp16, bf16 or none")
        if chunk_bytes < 1024:
            raise UsageError(f"AllReducer: chunk_bytes={chunk_bytes} is too small; use at least 1024")
        if crossover_bytes is not None and crossover_bytes < 0:
            raise UsageError(f"AllReducer: crossover_bytes={crossover_bytes} is negative; give a size >= 0")
        self.comm = comm.Dup()
        self.size, self.rank = self.comm.Get_size(), self.comm.Get_rank()
        self.algorithm = algorithm
        self.wire = COMPRESS[compress]
        self.chunk_bytes, self.window, self.check = chunk_bytes, window, check
        self._scratch_free: list[Scratch] = [Scratch()]
        self.stager = dev.PinnedStager()
        self._active: list[Handle] = []
        self._seq = 0
        self._tag_span = max(2 * (self.size - 1), 1)
        self._tag_slots = max(1, (self.comm.Get_attr(MPI.TAG_UB) or 32767) // self._tag_span)
        self.buffers, self.cross, self._last_shm = None, None, None
        if algorithm in ("shm", "auto") and self.size > 1:
            self._setup_shared_memory()
        self.crossover_bytes = crossover_bytes
        if algorithm == "auto" and crossover_bytes is None:
            self.crossover_bytes = self.measure_crossover() if self.size > 1 else 0

    # -- public -----------------------------------------------------------
    def allreduce_(self, tensor: torch.Tensor, average: bool = False) -> torch.Tensor:
        """Sum (or mean) ``tensor`` over the communicator, in place; blocks."""
        if (self.size > 1 and not self._active and not dev.is_device_tensor(tensor)
                and self.choose(tensor.numel() * tensor.element_size()) == "mpi"
                and tensor.is_contiguous()):
            self._validate(tensor, average)
            if self.check:
                self.check_agreement(tensor)
            return mpi_allreduce_(self.comm, tensor, average)
        return self.iallreduce_(tensor, average).wait()

    def iallreduce_(self, tensor: torch.Tensor, average: bool = False) -> Handle:
        """Start the all-reduce; the tensor must not be touched until ``wait()`` returns."""
        self._validate(tensor, average)
        if self.check:
            self.check_agreement(tensor)
        if self.size == 1 or tensor.numel() == 0:
            return Handle(self, None, tensor)
        target, finish = tensor, None
        half_on_device = (dev.is_device_tensor(tensor) and tensor.dtype in (torch.float16, torch.bfloat16)
                          and self.choose(tensor.numel() * tensor.element_size()) == "mpi")
        if dev.needs_staging(tensor) or half_on_device:  # MPI's user-defined op reads host memory
            target = self.stager.stage_in(tensor)
            finish = lambda: self.stager.stage_out(target, tensor)  # noqa: E731
        elif not tensor.is_contiguous():
            target = tensor.contiguous()
            finish = lambda: tensor.copy_(target)  # noqa: E731
        else:
            dev.synchronize(tensor)
        scratch = self._scratch_free.pop() if self._scratch_free else Scratch()
        return self._track(Handle(self, self._start(target, average, scratch), tensor, finish, scratch))

    def _track(self, handle: Handle) -> Handle:
        self._active.append(handle)
        return handle

    def _setup_shared_memory(self) -> None:
        """Node-local and cross-node communicators, if ranks of the group share nodes
        (the same number on every node, as hierarchical reduction needs)."""
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        counts = set(self.comm.allgather(local.Get_size()))
        if len(counts) > 1 or local.Get_size() == 1:
            local.Free()
            if self.algorithm == "shm" and len(counts) > 1:
                raise UsageError(f"AllReducer: algorithm='shm' needs the same number of group ranks on every "
                                 f"node, found {sorted(counts)}; use ring, or place ranks evenly")
            return
        self.buffers = SharedBuffers(local)
        if local.Get_size() < self.size:
            self.cross = self.comm.Split(color=local.Get_rank(), key=self.rank)
        self._cross_seq = 0

    @property
    def local_size(self) -> int:
        return self.buffers.size if self.buffers is not None else 1

    def empty(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A zeroed flat buffer for this reducer's collectives: in the node's shared
        memory when the reducer uses it, so reductions on it need no copy. Collective:
        every rank allocates the same sizes in the same order."""
        if self.buffers is not None:
            return self.buffers.empty(numel, dtype)
        return torch.zeros(numel, dtype=dtype)

    def release(self, tensor: torch.Tensor) -> None:
        """Give back a buffer from ``empty()`` (collective, like ``empty``)."""
        if self.buffers is not None:
            self.buffers.release(tensor)

    def owned(self, numel: int) -> tuple[int, int]:
        """The range [a, b) of a flat tensor of ``numel`` elements that this rank holds
        reduced after ``ireduce_scatter_`` and contributes to ``iall_gather_``. The
        ranges of the group's ranks are disjoint and cover the tensor."""
        if self.size == 1:
            return 0, numel
        if self.buffers is not None:
            c = self.cross
            return owned_range(numel, self.buffers.size, self.buffers.rank,
                               c.Get_size() if c is not None else 1, c.Get_rank() if c is not None else 0)
        return segment_bounds(numel, self.size)[owned_segment(self.rank, self.size)]

    def ireduce_scatter_(self, tensor: torch.Tensor, average: bool = False) -> Handle:
        """Start a reduce-scatter of a flat, contiguous host tensor: afterwards
        ``tensor[a:b]`` with ``(a, b) = owned(numel)`` holds the sum (mean) over the
        group; the rest of the tensor is unspecified."""
        return self._start_phase(tensor, average, "reduce_scatter")

    def iall_gather_(self, tensor: torch.Tensor) -> Handle:
        """Start an all-gather of a flat, contiguous host tensor: every rank's
        ``owned`` range is copied to all the others (never compressed)."""
        return self._start_phase(tensor, False, "all_gather")

    def _start_phase(self, tensor, average, phase) -> Handle:
        self._validate(tensor, average)
        if tensor.dim() != 1 or not tensor.is_contiguous() or dev.is_device_tensor(tensor):
            raise UsageError(f"AllReducer: {phase} needs a flat, contiguous host tensor")
        if self.check:
            self.check_agreement(tensor)
        if self.size == 1 or tensor.numel() == 0:
            return Handle(self, None, tensor)
        scratch = self._scratch_free.pop() if self._scratch_free else Scratch()
        return self._track(Handle(self, self._start(tensor, average, scratch, phase), tensor, None, scratch))

    def choose(self, nbytes: int) -> str:
        """The algorithm used for a message of ``nbytes`` (``shm`` only applies to
        tensors from ``empty()``; others take the ring instead)."""
        large = "shm" if self.buffers is not None else "ring"
        if self.algorithm == "shm":
            return large
        if self.algorithm != "auto":
            return self.algorithm
        return large if nbytes >= self.crossover_bytes else "mpi"

    def progress(self) -> None:
        """Advance every transfer in flight without blocking."""
        for handle in list(self._active):
            handle.test()

    def close(self) -> None:
        for handle in list(self._active):
            handle.wait()
        if self.buffers is not None:
            self.buffers.close()
            self.buffers.local.Free()
            if self.cross is not None:
                self.cross.Free()
            self.buffers = None
        if self.comm != MPI.COMM_NULL:
            self.comm.Free()

    # -- internals --------------------------------------------------------
    def _validate(self, tensor, average):
        if tensor.dtype not in DTYPE_CODES:
            raise UsageError(f"AllReducer: dtype {tensor.dtype} is not supported; use float32, float64, "
                             "float16, bfloat16, int32 or int64")
        if average and not tensor.dtype.is_floating_point:
            raise UsageError(f"AllReducer: average=True needs a floating tensor, got {tensor.dtype}; "
                             "sum integers and divide yourself")

    def check_agreement(self, tensor: torch.Tensor) -> None:
        """Raise UsageError on every rank unless all ranks pass the same numel and dtype."""
        code = DTYPE_CODES[tensor.dtype]
        mine = np.array([tensor.numel(), -tensor.numel(), code, -code], dtype=np.int64)
        agg = np.empty_like(mine)
        self.comm.Allreduce(mine, agg, op=MPI.MAX)
        if agg[0] == -agg[1] and agg[2] == -agg[3]:
            return
        every = self.comm.allgather((tensor.numel(), str(tensor.dtype).replace("torch.", "")))
        groups: dict = {}
        for r, sig in enumerate(every):
            groups.setdefault(sig, []).append(r)
        desc = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {','.join(map(str, rs))}: {dt}[{n}]"
                         for (n, dt), rs in groups.items())
        raise UsageError(f"allreduce: ranks of the communicator pass different tensors ({desc}); "
                         "pass the same numel and dtype on every rank")

    def _start(self, tensor, average, scratch, phase: str = "all"):
        """The operation for one collective: the all-reduce by ``choose``; its phases
        (ZeRO-1) by shared memory when the reducer has it, else the ring."""
        if phase == "all":
            algo = self.choose(tensor.numel() * tensor.element_size())
        else:
            algo = "shm" if self.buffers is not None else "ring"
        if algo == "mpi":
            return MpiAllreduce(self.comm, tensor, average)
        wire = self.wire if phase != "all_gather" and tensor.dtype in (torch.float32, torch.float64) else None
        if algo == "shm":
            found = self.buffers.find(tensor)
            if found is not None:
                return self._shm(found, tensor, average, phase, wire, scratch)
            if phase != "all":
                raise UsageError(f"AllReducer: {phase} with shared memory needs a tensor from empty()")
        return RingAllreduce(self.comm, tensor, tag_base=self._next_tag(), average=average,
                             chunk_bytes=self.chunk_bytes, window=self.window, wire_dtype=wire,
                             scratch=scratch, phase=phase)

    def _next_tag(self) -> int:
        tag_base = (self._seq % self._tag_slots) * self._tag_span
        self._seq += 1
        return tag_base

    def _shm(self, found, tensor, average, phase, wire, scratch) -> ShmCollective:
        tag = 0
        if self.cross is not None:
            span = max(2 * (self.cross.Get_size() - 1), 1)
            tag = (self._cross_seq % max(1, self._tag_slots * self._tag_span // span)) * span
            self._cross_seq += 1
        previous = self._last_shm if self._last_shm is not None and not self._last_shm.done else None
        self._last_shm = ShmCollective(self.buffers, found, tensor, phase=phase, average=average, total=self.size,
                                       cross=self.cross, cross_tag=tag, cross_wire=wire,
                                       chunk_bytes=self.chunk_bytes, scratch=scratch, after=previous)
        return self._last_shm

    def _wait_for(self, handle: Handle) -> None:
        if len(self._active) == 1 and self._active[0] is handle:
            handle._op.wait()
            handle._complete()
            return
        while not handle.done:
            for other in list(self._active):
                other.test()
                if handle.done:
                    break

    def measure_crossover(self, sizes=PROBE_BYTES, reps: int = 15) -> int:
        """The MPI / large-message crossover measured on this communicator (``comm.crossover``)."""
        return measure_crossover(self, sizes, reps)
