"""Execute a pipeline schedule on one stage.

`PipelineEngine.step` runs this stage's action list for one optimizer step:
forward/backward of each micro-batch, exchanges with the neighbouring stages
(`comm.p2p`), and the loss on the last stage. Loss contract, so that the result
equals one big batch::

    loss.count(targets) -> int        loss terms in a micro-batch (e.g. non-ignored tokens)
    loss(outputs, targets) -> Tensor  the SUM of those terms

Backward uses ``loss_sum * grad_scale / normalizer`` with `normalizer` the loss
terms of the *global* batch (all data-parallel replicas). Set ``grad_scale`` to
the data-parallel size when replicas then average (mean) their gradients, 1 when
they sum them or there is one replica.

An error on any stage ends the whole job (``on_error="abort"``, the default):
a neighbour blocked in a receive would otherwise wait forever.

Typical use (pp_comm: rank i is stage i; dp_comm: the replicas of this stage)::

    part = plan_partition(specs, pp, "parameters", comm=pp_comm)
    stage = Stage(specs, part, pp_comm.Get_rank(), seed=seed, device=device)
    sync = GradientAverager(list(stage.global_named_parameters()), dp_comm) if dp > 1 else None
    engine = PipelineEngine(stage, pp_comm, loss if stage.is_last else None, "1f1b",
                            grad_sync=sync, grad_scale=dp)
    for step in ...:
        opt.zero_grad()
        result = engine.step(microbatches, normalizer)   # same list on every stage
        engine.clip_grad_norm_(max_norm)
        opt.step()
        metrics = reduce_metrics(result, world_comm)      # dict on world rank 0
"""
from __future__ import annotations

import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from ..comm.p2p import P2P, Recv, Send
from ..errors import UsageError
from ..comm import faults, waits
from ..timing import TIMER
from .clip import clip_grad_norm_
from .memory import ActivationMeter
from .schedule import (BACKWARD, FORWARD, RECV_ACT, RECV_GRAD, SEND_ACT, SEND_GRAD, Action,
                       exchanges, get_schedule)
from .stage import Stage, StageError
from .tied import TiedWeights


@dataclass
class StepStats:
    step_s: float = 0.0                # wall time of the step on this stage
    compute_s: float = 0.0             # forward + loss + backward
    comm_s: float = 0.0                # waiting in exchanges
    peak_activation_bytes: int = 0     # saved-for-backward bytes (track_memory=True)
    microbatches: int = 0


class _MB:
    """What a stage holds for one micro-batch between its forward and backward."""
    __slots__ = ("inputs", "outputs", "loss", "grads", "received")

    def __init__(self):
        self.inputs = self.outputs = self.loss = self.grads = None
        self.received = []


def _floats(ts):
    return [t for t in ts if torch.is_tensor(t) and t.is_floating_point()]


@contextmanager
def _fp32_loss(out: tuple):
    """Inside an autocast region (mixed precision): autocast off, and half-precision
    outputs as fp32, so that the loss is computed in fp32. Else `out` unchanged."""
    device = next((t.device.type for t in out if torch.is_tensor(t)), "cpu")
    if not torch.is_autocast_enabled(device):
        yield out
        return
    with torch.autocast(device, enabled=False):
        yield tuple(t.float() if torch.is_tensor(t) and t.dtype in (torch.float16, torch.bfloat16) else t
                    for t in out)


class PipelineEngine:
    def __init__(self, stage: Stage, pp_comm, loss=None, schedule: str = "1f1b", *, grad_sync=None,
                 grad_scale: float | None = None, tied=(), partition=None, on_error: str = "abort",
                 track_memory: bool = False):
        """stage: this rank's `Stage`; pp_comm: the pipeline group, rank i = stage i.
        loss: required on the last stage (see module doc). grad_sync: an object with
        ``no_sync()`` and ``wait()`` (data-parallel averaging). grad_scale: the
        backward multiplier (module doc): required with `grad_sync` -- the
        data-parallel size if it averages, 1 if it sums -- else 1 by default.
        tied: groups of tied parameter names (needs `partition`)."""
        if pp_comm.Get_size() != stage.num_stages or pp_comm.Get_rank() != stage.index:
            raise UsageError(f"pipeline engine: stage {stage.index} of {stage.num_stages} on rank "
                             f"{pp_comm.Get_rank()} of a {pp_comm.Get_size()}-rank pipeline group; "
                             "give each stage the rank with its index")
        if stage.is_last and loss is None:
            raise UsageError("pipeline engine: the last stage needs a loss object "
                             "(count(targets) -> int, __call__(outputs, targets) -> summed loss)")
        if grad_scale is None:
            if grad_sync is not None:
                raise UsageError("pipeline engine: with grad_sync, pass grad_scale explicitly: the "
                                 "data-parallel size if grad_sync averages gradients, 1 if it sums them")
            grad_scale = 1.0
        if on_error not in ("abort", "raise"):
            raise UsageError(f"pipeline engine: on_error={on_error!r}; use 'abort' or 'raise'")
        self.stage, self.comm, self.loss = stage, pp_comm, loss
        self.schedule_fn = get_schedule(schedule)
        self.schedule_name = schedule
        self.grad_sync, self.grad_scale, self.on_error = grad_sync, float(grad_scale), on_error
        self.p2p = P2P(pp_comm, where=f"stage {stage.index}", device=stage.device)
        self.prev, self.next = stage.index - 1, stage.index + 1
        self.meter = None
        self.track_memory(track_memory)
        self.tied = None
        if tied:
            if partition is None:
                raise UsageError("pipeline engine: tied weights need the partition (partition=...)")
            named = [(f"{n}.{p}", t) for n, layer in zip(stage.layer_names, stage.layers)
                     for p, t in layer.named_parameters(remove_duplicate=False)]
            self.tied = TiedWeights(tied, named, partition, stage.index, pp_comm)
            self.tied.sync_values()
        self._plans: dict[int, list] = {}
        self.stats = StepStats()
        self.tp_comm = None  # the tensor group, when parameters are split over one (for clipping)
        self.forward_context = None  # mb -> a context manager around that micro-batch's forward

    # -- public -------------------------------------------------------------------------------
    def named_parameters(self):
        return self.stage.global_named_parameters()

    def parameters(self):
        return [p for _, p in self.stage.global_named_parameters()]

    def track_memory(self, on: bool = True) -> None:
        """Count bytes saved for backward (``stats.peak_activation_bytes``); costs a
        little time per saved tensor."""
        stage = self.stage
        self.meter = ActivationMeter(exclude=list(stage.parameters()) + list(stage.buffers())) if on else None

    def plan(self, num_microbatches: int) -> list[Action]:
        if num_microbatches not in self._plans:
            self._plans[num_microbatches] = self.schedule_fn(self.stage.num_stages, num_microbatches)[self.stage.index]
        return self._plans[num_microbatches]

    def step(self, microbatches, normalizer: float):
        """Forward and backward every micro-batch: a list of ``(inputs_tuple, targets)``
        (the same list on every stage). Gradients accumulate into the parameters'
        ``.grad``; on return they are final (data-parallel synchronised, tied weights
        summed). Returns ``(loss_sum, count)`` on the last stage, None elsewhere."""
        try:
            return self._step(microbatches, normalizer)
        except BaseException as exc:  # noqa: BLE001 - any failure must end every rank
            if self.on_error == "raise" or isinstance(exc, (SystemExit, KeyboardInterrupt)):
                raise
            self._abort(exc)

    def clip_grad_norm_(self, max_norm: float, grads: dict | None = None, dp_comm=None) -> float:
        """Global gradient-norm clipping over the whole pipeline (collective on pp_comm).
        `grads` and `dp_comm` (ZeRO-1): the part of each gradient this replica holds
        reduced ({id(parameter): tensor}), the norm summed over the data-parallel group."""
        exclude = self.tied.duplicates() if self.tied else set()
        return clip_grad_norm_(self.parameters(), max_norm, self.comm, exclude, self.tp_comm, dp_comm, grads)

    # -- execution ---------------------------------------------------------------------------
    def _step(self, microbatches, normalizer):
        start = time.perf_counter()
        microbatches = list(microbatches)
        if not normalizer or normalizer <= 0:
            raise UsageError(f"stage {self.stage.index}: normalizer={normalizer!r}; pass the number of "
                             "loss terms (e.g. tokens) in the global batch, > 0")
        plan = self.plan(len(microbatches))
        last_backward = max(i for i, a in enumerate(plan) if a.op == BACKWARD)
        stats = StepStats(microbatches=len(microbatches))
        if self.meter is not None:
            self.meter.reset_peak()
        state = {}
        loss_sum, count = 0.0, 0
        pos = 0
        for item in exchanges(plan):
            if isinstance(item, tuple):
                t0 = time.perf_counter()
                self._exchange(item, state, len(microbatches))
                stats.comm_s += time.perf_counter() - t0
                TIMER.record("pipeline_wait", ", ".join(f"{a.op.replace('_', ' ')} mb {a.mb}" for a in item),
                             t0, time.perf_counter() - t0)
                pos += len(item)
                continue
            t0 = time.perf_counter()
            if item.op == FORWARD:
                result = self._forward(item.mb, microbatches[item.mb], state.setdefault(item.mb, _MB()))
                if result is not None:
                    loss_sum += result[0]
                    count += result[1]
            else:
                sync = self.grad_sync is not None and pos != last_backward
                with self.grad_sync.no_sync() if sync else nullcontext():
                    self._backward(item.mb, state[item.mb], normalizer)
                if self.stage.is_first:
                    self._release(state.pop(item.mb))
            stats.compute_s += time.perf_counter() - t0
            TIMER.record("compute", f"{item.op} mb {item.mb}", t0, time.perf_counter() - t0)
            pos += 1
        t0 = time.perf_counter()
        piped = self.stage.num_stages > 1
        with TIMER.span("pipeline_wait", "pipeline sends complete") if piped else nullcontext():
            self.p2p.flush()
        if self.grad_sync is not None:
            self.grad_sync.wait()
        if self.tied is not None:
            self.tied.reduce_grads()
        stats.comm_s += time.perf_counter() - t0
        if state:
            raise RuntimeError(f"stage {self.stage.index}: micro-batches {sorted(state)} were not completed "
                               "by the schedule")
        stats.step_s = time.perf_counter() - start
        stats.peak_activation_bytes = self.meter.peak if self.meter is not None else 0
        self.stats = stats
        return (float(loss_sum), count) if self.stage.is_last else None

    def _forward(self, mb: int, batch, st: _MB):
        inputs, targets = batch
        inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
        if self.stage.is_first:
            st.inputs = tuple(t.to(self.stage.device) if torch.is_tensor(t) else t for t in inputs)
        else:
            st.inputs = tuple(t.requires_grad_(True) if t.is_floating_point() else t for t in st.received)
        faults.point("forward")
        around = self.forward_context(mb) if self.forward_context is not None else nullcontext()
        with around, waits.where(f"stage {self.stage.index}, micro-batch {mb}, forward"), \
                self.meter.track() if self.meter is not None else nullcontext():
            out = self.stage(*st.inputs, mb=mb)
            if not self.stage.is_last:
                st.outputs = out
                return None
            targets = targets.to(self.stage.device) if torch.is_tensor(targets) else targets
            try:
                with _fp32_loss(out) as out:  # under autocast: the loss in fp32, outside it
                    st.loss = faults.poison("loss", self.loss(out[0] if len(out) == 1 else out, targets))
                n = int(self.loss.count(targets))
            except UsageError as exc:
                raise type(exc)(f"stage {self.stage.index}, micro-batch {mb}, loss: {exc}") from exc
            except Exception as exc:
                raise StageError(f"stage {self.stage.index}, micro-batch {mb}, loss: "
                                 f"{type(exc).__name__}: {exc}") from exc
        return st.loss.detach(), n

    def _backward(self, mb: int, st: _MB, normalizer: float) -> None:
        faults.point("backward")
        try:
            if self.stage.is_last:
                with waits.where(f"stage {self.stage.index}, micro-batch {mb}, backward"):
                    (st.loss * (self.grad_scale / normalizer)).backward()
                st.loss = None
            else:
                outs = _floats(st.outputs)
                pairs = [(o, g) for o, g in zip(outs, st.grads) if o.requires_grad]
                if pairs:
                    with waits.where(f"stage {self.stage.index}, micro-batch {mb}, backward"):
                        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
                st.outputs = None
        except Exception as exc:
            raise StageError(f"stage {self.stage.index}, micro-batch {mb}, backward: "
                             f"{type(exc).__name__}: {exc}") from exc

    def _exchange(self, group: tuple[Action, ...], state: dict, of: int) -> None:
        sends, recvs, targets, done = [], [], [], []
        for a in group:
            st = state.setdefault(a.mb, _MB())
            if a.op == SEND_ACT:
                sends.append(Send(self.next, "act", a.mb, st.outputs, of))
            elif a.op == SEND_GRAD:
                grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in _floats(st.inputs)]
                sends.append(Send(self.prev, "grad", a.mb, grads, of))
                done.append(a.mb)
            elif a.op == RECV_ACT:
                recvs.append(Recv(self.prev, "act", a.mb, what=f"stage {self.prev}", of=of))
                targets.append((a, st))
            elif a.op == RECV_GRAD:
                expect = [(tuple(o.shape), o.dtype) for o in _floats(st.outputs)]
                recvs.append(Recv(self.next, "grad", a.mb, expect=expect, what=f"stage {self.next}", of=of))
                targets.append((a, st))
        received = self.p2p.exchange(sends, recvs)
        for (a, st), tensors in zip(targets, received):
            if a.op == RECV_ACT:
                st.received = list(tensors)
            else:
                st.grads = list(tensors)
        for mb in done:
            self._release(state.pop(mb))

    def _release(self, st: _MB) -> None:
        """Return a finished micro-batch's receive buffers to the pool."""
        for t in st.received:
            t.grad = None
            self.p2p.release(t)
        for t in st.grads or ():
            self.p2p.release(t)
        st.inputs = st.outputs = st.grads = st.loss = None
        st.received = []

    def _abort(self, exc: BaseException) -> None:
        from ..failure import abort, error_line
        if isinstance(exc, UsageError):
            abort(exc.exit_code, error_line(exc))
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        abort(1, f"{detail}mpitrain: pipeline stage {self.stage.index} failed: "
                 f"{type(exc).__name__}: {exc} -- aborting all ranks")


def reduce_metrics(result, comm, root: int = 0) -> dict | None:
    """Sum every last stage's ``(loss_sum, count)`` (others pass None) onto `root`
    of `comm` (e.g. COMM_WORLD): ``{"loss": mean, "loss_sum", "count"}`` there, None elsewhere."""
    import numpy as np
    from mpi4py import MPI

    local = np.array([float(result[0]), float(result[1])] if result is not None else [0.0, 0.0])
    total = np.zeros(2) if comm.Get_rank() == root else None
    comm.Reduce(local, total, op=MPI.SUM, root=root)
    if comm.Get_rank() != root:
        return None
    loss_sum, count = float(total[0]), int(round(total[1]))
    return {"loss": loss_sum / count if count else float("nan"), "loss_sum": loss_sum, "count": count}
