"""Bucketed gradient averaging over a data-parallel group, overlapped with backward.

Parameters (those with ``requires_grad``) are laid out into flat buckets of one
dtype: the first holds ``first_bucket_bytes``, the others ``bucket_bytes``; a
parameter larger than that gets a bucket of its own. The first layout follows
reverse registration order; after the first synchronised step it is rebuilt
once in the order gradients actually arrived on group rank 0 (broadcast, so
every rank uses the same layout). The parameter list is checked to be identical
on every replica, so all ranks agree on the buckets.

A ``register_post_accumulate_grad_hook`` on every parameter copies its gradient
into its bucket slot (and points ``p.grad`` at the slot, so later steps
accumulate there directly). When a bucket is complete, it and every complete
bucket before it are launched as non-blocking all-reduces, strictly in bucket
order. Transfers in flight advance while backward goes on: from a background
thread that polls MPI every 0.2 ms (``progress="thread"``, the default) or from
every later hook (``progress="hooks"``). ``wait()`` launches what is left
(parameters that got no gradient take part with zeros, so ranks never
disagree), finishes every bucket, and leaves the group mean (or sum, with
``average=False``) in ``p.grad``, which then is a view into its bucket.

With ``reduce_scatter=True`` (ZeRO-1) buckets are reduce-scattered instead:
after ``wait()`` only ``bucket.buffer[a:b]`` with ``(a, b) = owned(bucket)`` holds
the group's mean (sum); the rest of each ``p.grad`` is unspecified. The bucket
layout then stays in reverse registration order (a sharded optimizer's state is
laid out on it).

Inside ``no_sync()`` hooks do nothing: gradients accumulate locally and the next
backward outside it communicates the accumulated sum. A second backward that
reaches a parameter before ``wait()`` is a ``UsageError``.

``timings`` (cumulative since ``reset_timings()``): ``steps``; ``hook_seconds``
spent in hooks; ``exposed_seconds`` spent in ``wait()``, i.e. communication not
hidden behind backward; ``comm_seconds`` from the first launch to the end of
``wait()``; ``bytes`` of gradients and number of ``buckets``.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import torch

from mpitrain.comm import faults
from mpitrain.comm.allreduce import AllReducer
from mpitrain.comm.progress import ProgressThread
from mpitrain.errors import UsageError
from mpitrain.timing import TIMER


@dataclass
class Bucket:
    index: int
    dtype: torch.dtype
    device: torch.device
    params: list = field(default_factory=list)      # (name, param, offset)
    numel: int = 0
    buffer: torch.Tensor | None = None
    pending: int = 0
    handle: object = None

    @property
    def nbytes(self) -> int:
        return self.numel * self.buffer.element_size()


def plan_buckets(ordered_params, bucket_bytes: int, first_bucket_bytes: int, empty=None) -> list[Bucket]:
    """Group (name, param) pairs, in the given order, into dtype-uniform buckets whose
    buffers come from ``empty(numel, dtype)`` (zeroed host tensors by default)."""
    buckets: list[Bucket] = []
    current: dict = {}
    for name, p in ordered_params:
        key = (p.dtype, p.device)
        nbytes = p.numel() * p.element_size()
        bucket = current.get(key)
        limit = first_bucket_bytes if not buckets or bucket is buckets[0] else bucket_bytes
        if bucket is None or (bucket.numel and (bucket.numel * p.element_size() + nbytes) > limit):
            bucket = Bucket(len(buckets), p.dtype, p.device)
            buckets.append(bucket)
            current[key] = bucket
        bucket.params.append((name, p, bucket.numel))
        bucket.numel += p.numel()
    for b in buckets:
        if empty is not None and b.device.type == "cpu":
            b.buffer = empty(b.numel, b.dtype)
        else:
            b.buffer = torch.zeros(b.numel, dtype=b.dtype, device=b.device)
    return buckets


class GradientAverager:
    """Average ``p.grad`` over the data-parallel communicator ``comm`` (see module docstring)."""

    def __init__(self, named_params, comm, *, bucket_bytes: int = 25 * 2**20,
                 first_bucket_bytes: int = 1 * 2**20, algorithm: str = "auto",
                 crossover_bytes: int | None = None, compress: str | None = None,
                 average: bool = True, chunk_bytes: int | None = None, progress: str = "thread",
                 reduce_scatter: bool = False):
        if bucket_bytes <= 0 or first_bucket_bytes <= 0:
            raise UsageError(f"GradientAverager: bucket_bytes={bucket_bytes} and first_bucket_bytes="
                             f"{first_bucket_bytes} must be positive; set bucket sizes in bytes > 0")
        self.named_params = [(n, p) for n, p in named_params if p.requires_grad]
        self._index = {id(p): i for i, (_, p) in enumerate(self.named_params)}
        self.comm = comm
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self.average = average
        self.check_identical()
        self.bucket_bytes, self.first_bucket_bytes = bucket_bytes, first_bucket_bytes
        kwargs = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
        self.reducer = AllReducer(comm, algorithm, crossover_bytes, compress, check=False, **kwargs)
        self.buckets: list[Bucket] = []
        self._layout(list(reversed(self.named_params)))
        self.reduce_scatter = reduce_scatter
        self._arrival: list[int] | None = None if reduce_scatter else []
        if progress not in ("thread", "hooks"):
            raise UsageError(f"GradientAverager: progress={progress!r} is unknown; use 'thread' or 'hooks'")
        self._lock = threading.Lock()
        self._progress = ProgressThread(self.reducer, self._lock) if progress == "thread" else None
        self._sync = True
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for _, p in self.named_params]
        self._reset_step()
        self.timings = {"steps": 0, "hook_seconds": 0.0, "exposed_seconds": 0.0,
                        "comm_seconds": 0.0, "bytes": sum(b.nbytes for b in self.buckets),
                        "buckets": len(self.buckets)}

    # -- setup ------------------------------------------------------------
    def _layout(self, ordered_params) -> None:
        """Buckets in this order; their buffers are in shared memory when the reducer
        reduces through it (``p.grad`` then is a view of that memory)."""
        self.buckets = plan_buckets(ordered_params, self.bucket_bytes, self.first_bucket_bytes,
                                    self.reducer.empty)
        self._slot: dict[int, tuple[Bucket, int]] = {}
        for b in self.buckets:
            for _, p, off in b.params:
                self._slot[id(p)] = (b, off)

    def _relayout_by_arrival(self) -> None:
        """After the first synchronised step, order buckets by when gradients arrived on
        group rank 0 (the same layout everywhere), like DDP's bucket rebuild."""
        order = self.comm.bcast(self._arrival, root=0)
        self._arrival = None
        index = self._index
        seen = set(order)
        rest = [i for i in reversed(range(len(self.named_params))) if i not in seen]
        ordered = [self.named_params[i] for i in list(order) + rest]
        if [index[id(p)] for _, p in ordered] == [index[id(p)] for b in self.buckets for _, p, _ in b.params]:
            return
        old = self.buckets
        self._layout(ordered)
        self.timings["buckets"] = len(self.buckets)
        with torch.no_grad():
            for _, p in self.named_params:
                if p.grad is not None:
                    self._place(p)
        for b in old:
            self.reducer.release(b.buffer)

    def check_identical(self) -> None:
        """UsageError on every rank unless all replicas have the same names, shapes and dtypes."""
        mine = [(n, tuple(p.shape), str(p.dtype)) for n, p in self.named_params]
        every = self.comm.allgather(mine)
        bad = [r for r, sig in enumerate(every) if sig != every[0]]
        if not bad:
            return
        first = every[bad[0]]
        diff = next((f"{a} vs {b}" for a, b in zip(every[0], first) if a != b),
                    f"{len(every[0])} vs {len(first)} parameters")
        raise UsageError(f"data parallel: ranks {', '.join(map(str, bad))} of the group have different "
                         f"parameters than rank 0 (first difference: {diff}); build the same model on "
                         "every replica")

    def broadcast_parameters(self) -> None:
        """Copy every parameter from group rank 0 to the other replicas (after checking them)."""
        self.check_identical()
        with torch.no_grad():
            for b in self.buckets:
                host = torch.cat([p.detach().reshape(-1).cpu() for _, p, _ in b.params])
                self.comm.Bcast(host.view(torch.uint8).numpy(), root=0)
                for _, p, off in b.params:
                    p.copy_(host[off:off + p.numel()].view(p.shape))

    # -- per step ---------------------------------------------------------
    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside only accumulate ``p.grad`` locally."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    def _reset_step(self):
        for b in self.buckets:
            b.pending, b.handle = len(b.params), None
        self._ready: set[int] = set()
        self._next = 0
        self._first_launch = None

    def _place(self, p) -> None:
        """Make ``p.grad`` the view of its bucket slot, copying (or zeroing) as needed."""
        bucket, off = self._slot[id(p)]
        view = bucket.buffer[off:off + p.numel()].view(p.shape)
        if p.grad is None:
            view.zero_()
        elif p.grad.data_ptr() != view.data_ptr():
            view.copy_(p.grad)
        p.grad = view

    def _on_grad(self, p) -> None:
        if not self._sync:
            return
        t0 = time.perf_counter()
        bucket, _ = self._slot[id(p)]
        if bucket.handle is not None or id(p) in self._ready:
            raise UsageError("data parallel: a second backward reached a parameter before wait(); "
                             "call wait() and step between backward passes, or use no_sync() to accumulate")
        self._place(p)
        self._ready.add(id(p))
        if self._arrival is not None:
            self._arrival.append(self._index[id(p)])
        bucket.pending -= 1
        with self._lock:
            self._launch_ready()
            if self._progress is None:
                self.reducer.progress()
        self.timings["hook_seconds"] += time.perf_counter() - t0

    def _launch_ready(self) -> None:
        while self._next < len(self.buckets) and self.buckets[self._next].pending == 0:
            b = self.buckets[self._next]
            if self._first_launch is None:
                self._first_launch = time.perf_counter()
            faults.point("all-reduce")
            start = self.reducer.ireduce_scatter_ if self.reduce_scatter else self.reducer.iallreduce_
            b.handle = start(b.buffer, average=self.average)
            self._next += 1
            if self._progress is not None:
                self._progress.kick()

    def wait(self) -> None:
        """Finish every bucket; afterwards ``p.grad`` holds the group mean (or sum)."""
        t0 = time.perf_counter()
        for b in self.buckets[self._next:]:
            for _, p, _ in b.params:
                if id(p) not in self._ready:
                    self._place(p)
                    self._ready.add(id(p))
            b.pending = 0
        with self._lock:
            self._launch_ready()
            for b in self.buckets:
                b.handle.wait()
        end = time.perf_counter()
        self.timings["exposed_seconds"] += end - t0
        self.timings["comm_seconds"] += end - (self._first_launch or t0)
        TIMER.record("dp_exposed", "gradient all-reduce wait", t0, end - t0)
        TIMER.add("dp_hidden", max(0.0, t0 - (self._first_launch or t0)))  # in flight during backward
        if TIMER.events is not None:
            for i, b in enumerate(self.buckets):
                TIMER.record("allreduce", f"all-reduce bucket {i} ({b.buffer.numel() * b.buffer.element_size() / 2**20:.1f} MiB)",
                             b.handle.started, b.handle.finished - b.handle.started, thread=1, count=False)
        self.timings["steps"] += 1
        if self._arrival is not None:
            self._relayout_by_arrival()
        self._reset_step()

    def owned(self, bucket: Bucket) -> tuple[int, int]:
        """The range of ``bucket.buffer`` this rank holds reduced (``reduce_scatter``)."""
        return self.reducer.owned(bucket.numel)

    def reset_timings(self) -> None:
        for key in ("steps", "hook_seconds", "exposed_seconds", "comm_seconds"):
            self.timings[key] = 0 if key == "steps" else 0.0

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def close(self) -> None:
        self.remove_hooks()
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        with torch.no_grad():  # gradients leave the buckets' (possibly shared) memory before it is freed
            for _, p in self.named_params:
                if p.grad is not None:
                    p.grad = p.grad.clone()
        self.reducer.close()
