"""ZeRO-1: the optimizer state sharded over the data-parallel group (``[comm] zero = 1``).

Gradients are reduce-scattered (``GradientAverager(reduce_scatter=True)``): after
``wait()`` each replica holds the group's sum only on the range ``owned(bucket)``
of every bucket. The part of a parameter inside that range is a *segment*
(at most one per parameter: a parameter lies in one bucket, the range is
contiguous); each replica steps only its segments:

* ``ShardedGradients`` stands in for the averager as the pipeline engine's
  ``grad_sync`` and knows the segments. Buckets that hold a tied weight are
  all-gathered after the reduce-scatter: the members of a tied group sum whole
  gradients (``pipeline/tied.py``), and they sit at different places of their
  buckets, so their owned ranges differ.
* ``ZeroOptimizer`` is a torch optimizer over *views*: for every segment a leaf
  tensor viewing the parameter's data, whose ``.grad`` views the reduced slice of
  the bucket, in the parameter's weight-decay group. An inner optimizer of the
  job's kind (`train/optim.py`, same hyper-parameters) then does on each element
  exactly the update the unsharded optimizer would, holding 1/dp of its state.
  Bucket by bucket, as its step is done, the updated segments are copied into
  the owned slice of the bucket (its reduced gradients are spent) and the bucket
  is all-gathered (the progress thread advances it while the next bucket
  steps); ``step()`` returns once every parameter is whole again. No buffer
  beyond the gradient buckets is needed.

Gradient clipping and the non-finite check use the segments (`pipeline/clip.py`:
squares summed over the data-parallel group). Checkpoints hold the state under
global names with the unsharded optimizer's shapes (``named_state`` gathers it
over the group; ``load_named_state`` keeps this replica's segments), so they load
with or without ZeRO, on any dp.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError


@dataclass
class Segment:
    name: str                # global name of the parameter
    param: torch.Tensor
    bucket: object           # the averager's Bucket
    start: int               # [start, end) of the flattened parameter
    end: int
    at: int                  # where `start` lies in the bucket

    @property
    def grad(self) -> torch.Tensor:
        """The reduced gradient of the segment (a view of the bucket)."""
        return self.bucket.buffer[self.at:self.at + self.end - self.start]


def flat(p: torch.Tensor) -> torch.Tensor:
    """A parameter's data as a flat view (never a copy)."""
    if not p.is_contiguous():
        raise UsageError(f"ZeRO-1: a parameter of shape {list(p.shape)} is not contiguous; make it contiguous")
    return p.detach().view(-1)


class ShardedGradients:
    """The engine's ``grad_sync`` under ZeRO-1: the averager's reduce-scatter, plus
    the segments each parameter has here (see the module doc)."""

    def __init__(self, averager, tied_names=()):
        if not averager.reduce_scatter:
            raise UsageError("ZeRO-1 needs a GradientAverager with reduce_scatter=True")
        self.averager, self.comm = averager, averager.comm
        self.segments: list[Segment] = []
        for b in averager.buckets:
            a, e = averager.owned(b)
            for name, p, off in b.params:
                s, t = max(a, off), min(e, off + p.numel())
                if s < t:
                    self.segments.append(Segment(name, p, b, s - off, t - off, s))
        tied = set(tied_names)
        self.whole = [b for b in averager.buckets if any(n in tied for n, _, _ in b.params)]

    def no_sync(self):
        return self.averager.no_sync()

    def wait(self) -> None:
        """Reduce-scatter every bucket; buckets with a tied weight are made whole."""
        self.averager.wait()
        if self.whole:
            with self.averager._lock:
                handles = [self.averager.reducer.iall_gather_(b.buffer) for b in self.whole]
                for h in handles:
                    h.wait()

    def grads(self) -> dict[int, torch.Tensor]:
        """id(parameter) -> its reduced gradient segment, for parameters with one here."""
        return {id(s.param): s.grad for s in self.segments}

    def owned_numel(self) -> int:
        return sum(s.end - s.start for s in self.segments)


class ZeroOptimizer(torch.optim.Optimizer):
    """The job's optimizer with its state sharded over the data-parallel group.
    Looks like the unsharded one to the trainer and the schedule: ``param_groups``
    (one per weight-decay group, as `optim.decay_groups`; a group may hold no
    segment here), ``state`` (keyed by segment views), ``step()`` and ``zero_grad()``.
    Collective over the group: ``step``, ``named_state``."""

    def __init__(self, shards: ShardedGradients, named_params, groups: list[dict], make):
        """`groups`: the unsharded optimizer's parameter groups (dicts with "params" and
        their hyper-parameters, e.g. `optim.decay_groups`); `make(groups)`: the torch
        optimizer of the job over groups like them."""
        self.shards = shards
        self.averager = shards.averager
        name_of = {id(p): n for n, p in named_params}
        self.params = [p for g in groups for p in g["params"]]
        segment_of = {id(s.param): s for s in shards.segments}
        self.views: list[tuple[Segment, torch.Tensor]] = []
        self.group_names = []
        sharded = []
        for g in groups:
            self.group_names.append([name_of[id(p)] for p in g["params"]])
            views = []
            for p in g["params"]:
                seg = segment_of.get(id(p))
                if seg is not None:
                    view = flat(p)[seg.start:seg.end].requires_grad_(True)
                    view.grad = seg.grad
                    views.append(view)
                    self.views.append((seg, view))
            sharded.append({**g, "params": views})
        self.inner = make(sharded)
        super().__init__(self.inner.param_groups, self.inner.defaults)  # the same group dicts
        self.state = self.inner.state
        self._by_bucket = [(b, [(s, v) for s, v in self.views if s.bucket is b]) for b in self.averager.buckets]

    @torch.no_grad()
    def step(self, closure=None):
        """Step this replica's segments, bucket by bucket, all-gathering each bucket's
        parameters as soon as its step is done; every parameter is whole on return.
        The gradient bucket carries the all-gather (its reduced slice is spent once its
        step is done): after ``step()`` the gradients hold parameter values until
        ``zero_grad()``, which must come before the next backward anyway (outside the
        owned slices a reduce-scatter leaves gradients unspecified)."""
        if closure is not None:
            raise UsageError("ZeRO-1: step(closure) is not supported; compute the loss before step()")
        averager = self.averager
        progress = getattr(averager, "_progress", None)
        for _, view in self.views:
            view.grad = None
        handles = []
        for bucket, items in self._by_bucket:
            for seg, view in items:
                view.grad = seg.grad
            if items:
                self.inner.step()
            for seg, view in items:
                view.grad = None
                seg.grad.copy_(view)
            with averager._lock:
                handles.append(averager.reducer.iall_gather_(bucket.buffer))
                if progress is not None:
                    progress.kick()
                else:
                    averager.reducer.progress()
        with averager._lock:
            for h in handles:
                h.wait()
        for bucket, _ in self._by_bucket:
            for _, p, off in bucket.params:
                flat(p).copy_(bucket.buffer[off:off + p.numel()])
        for seg, view in self.views:
            view.grad = seg.grad
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Every parameter's whole gradient (its bucket slot), as the unsharded optimizer:
        the next reduce-scatter adds every replica's slots."""
        for p in self.params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach().zero_()

    def owned_numel(self) -> int:
        """Parameter elements whose optimizer state this replica holds."""
        return self.shards.owned_numel()

    def state_bytes(self) -> int:
        """Bytes of optimizer state tensors held by this rank."""
        return sum(v.numel() * v.element_size() for st in self.state.values() for v in st.values()
                   if torch.is_tensor(v))

    # -- checkpoints: the unsharded optimizer's state, by global name ------------------------
    def _hyper(self) -> list[dict]:
        return [{**{k: v for k, v in g.items() if k != "params"}, "params": list(names)}
                for g, names in zip(self.param_groups, self.group_names)]

    def named_state(self) -> dict:
        """`state.optimizer_state` output: every parameter's whole (tensor-shard) state,
        gathered over the data-parallel group (collective)."""
        mine = {}
        for seg, view in self.views:
            if view in self.state:
                mine[seg.name] = {k: _describe(v) for k, v in self.state[view].items()}
        known: dict = {}
        for part in self.shards.comm.allgather(mine):
            for name, stats in part.items():
                known.setdefault(name, {}).update(stats)
        out: dict = {name: {} for name in known}
        reducer = self.averager.reducer
        release = getattr(reducer, "release", None)  # a shared-memory window is freed collectively
        for bucket, items in self._by_bucket:  # one stat of one bucket at a time: little extra memory
            here = [(n, p, off) for n, p, off in bucket.params if n in known]
            for key, dtype in sorted({(k, d[1]) for n, _, _ in here for k, d in known[n].items() if d[0] == "elem"}):
                with self.averager._lock:
                    buf = reducer.empty(bucket.numel, getattr(torch, dtype))
                    for seg, view in items:
                        value = self.state.get(view, {}).get(key)
                        if value is not None:
                            buf[seg.at:seg.at + view.numel()].copy_(value.reshape(-1))
                    reducer.iall_gather_(buf).wait()
                    for name, p, off in here:
                        if key in known[name]:
                            out[name][key] = buf[off:off + p.numel()].view(p.shape).clone()
                    if release is not None:
                        release(buf)
        for name, stats in known.items():
            for key, d in stats.items():
                if d[0] == "scalar":
                    out[name][key] = torch.tensor(d[2], dtype=getattr(torch, d[1]))
                elif d[0] == "value":
                    out[name][key] = d[2]
        return {"param_groups": self._hyper(), "state": out}

    def load_named_state(self, saved: dict) -> None:
        """Restore `named_state` (or unsharded `optimizer_state`) output: hyper-parameters
        by group, and of each parameter's state this replica's segment."""
        by_name = {n: g for g in saved["param_groups"] for n in g["params"]}
        for group, names in zip(self.param_groups, self.group_names):
            for name in names:
                if name not in by_name:
                    raise UsageError(f"trainer state: no optimizer entry for parameter {name!r}; the state "
                                     "belongs to another model")
                group.update({k: v for k, v in by_name[name].items() if k != "params"})
        for seg, view in self.views:
            stats = saved["state"].get(seg.name)
            if stats is None:
                continue
            state = {}
            for key, value in stats.items():
                if torch.is_tensor(value) and value.dim():
                    if value.numel() != seg.param.numel():
                        raise UsageError(f"trainer state: optimizer {key!r} of {seg.name!r} has "
                                         f"{value.numel()} values, the parameter {seg.param.numel()}; the "
                                         "state belongs to another model")
                    value = value.reshape(-1)[seg.start:seg.end].to(view.device, copy=True)
                elif torch.is_tensor(value):
                    value = value.clone()
                state[key] = value
            self.state[view] = state


def _describe(value):
    """A state entry for the gather: ("elem", dtype) per element, ("scalar", dtype,
    number) for a 0-d tensor (Adam's step), ("value", None, v) for anything else."""
    if torch.is_tensor(value):
        dtype = str(value.dtype).replace("torch.", "")
        return ("elem", dtype) if value.dim() else ("scalar", dtype, value.item())
    return ("value", None, value)
