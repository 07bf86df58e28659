"""One rank's share of a dp x pp x tp model: its pipeline stage (with this rank's
tensor shards of its layers), the data-parallel gradient averager for that
stage and shard, and the pipeline engine that runs both."""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

import numpy as np

from ..config import CommSection
from ..dp.grad_sync import GradientAverager
from ..errors import UsageError
from ..failure import describe_exception, raise_together
from ..layers import BuildContext
from ..pipeline.engine import PipelineEngine
from ..pipeline.inference import forward_only
from ..pipeline.partition import plan_partition
from ..pipeline.stage import Stage
from .precision import autocast_context


class ParallelModel:
    def __init__(self, topo, specs, loss, *, seed: int, schedule: str = "1f1b", partition="parameters",
                 comm_cfg=None, sample=None, tied=(), dropout: str = "invariant", precision: str = "fp32",
                 recompute: bool = False, scaler=None):
        """`partition`: a method name or a list of cut points; `sample`: the first
        layer's input tuple (for partition = 'profile'); `comm_cfg`: the job's
        [comm] section (bucket sizes, algorithm, compression, zero; None = defaults);
        `tied`: groups of global parameter names that are one weight;
        `dropout`: "invariant" (masks a function of seed, step, layer, sample and
        position: every layout draws the same) or "torch" (torch's RNG);
        `precision`: "fp32" | "bf16" | "fp16", the autocast of each training forward
        (`train/precision.py`); `recompute`: recompute each layer's activations in
        backward; `scaler`: a `LossScaler` (fp16) whose scale multiplies the loss.

        The partition is decided once, on world rank 0, and broadcast to every
        rank: every replica cuts the model at the same places even when the
        method measures times ('profile'). A model that cannot be partitioned or
        built (a builder that raises, a tied name that names no parameter) raises
        the same UsageError on every rank, before any collective of the model."""
        self.topo, self.seed, self.dropout, self.tied = topo, seed, dropout, [tuple(g) for g in tied]
        self.precision, self.scaler = precision, scaler
        if topo.grid.pp == 1:
            partition = "uniform"  # one stage holds every layer; nothing to balance or measure
        ctx = BuildContext.of(topo)

        def plan_and_build():
            part = plan_partition(specs, topo.grid.pp, partition, comm=topo.world, sample=sample, seed=seed,
                                  tied=self.tied)
            return part, build_stage(specs, part, topo.coords.pp, seed, ctx)

        self.partition, self.stage = raise_together(plan_and_build, topo.world)
        self.stage.recompute = recompute
        if hasattr(loss, "bind"):  # a loss over outputs split by the tensor group (vocab-parallel)
            loss.bind(ctx)
        named = list(self.stage.global_named_parameters())
        self.averager = None
        self.shards = None  # ZeRO-1: the gradient segments this replica steps (dp/zero.py)
        if topo.grid.dp > 1:
            c = comm_cfg if comm_cfg is not None else CommSection()
            # each replica's loss is divided by the loss terms of the global batch, so the
            # replicas' gradients add up to the one-process gradient: sum, no division pass
            self.averager = GradientAverager(
                named, topo.dp_comm,
                bucket_bytes=int(c.bucket_mb * 2**20), first_bucket_bytes=int(c.first_bucket_mb * 2**20),
                algorithm=c.algorithm, crossover_bytes=c.crossover_bytes or None,
                compress=None if c.compress == "none" else c.compress, average=False,
                reduce_scatter=c.zero == 1)
            self.averager.broadcast_parameters()
            if c.zero == 1:
                from ..dp.zero import ShardedGradients

                self.shards = ShardedGradients(self.averager, [n for g in self.tied for n in g])
        self.engine = PipelineEngine(self.stage, topo.pp_comm, loss if self.stage.is_last else None,
                                     schedule, grad_sync=self.shards or self.averager, grad_scale=1,
                                     tied=list(tied), partition=self.partition)
        if topo.grid.tp > 1:
            self.engine.tp_comm = topo.tp_comm

    def named_parameters(self):
        return list(self.stage.global_named_parameters())

    def global_count(self, local_count: int) -> int:
        """Loss terms in the global batch: this replica's count summed over replicas."""
        if self.topo.grid.dp == 1:
            return int(local_count)
        return int(self.topo.dp_comm.allreduce(int(local_count)))

    def train_step(self, microbatches, normalizer: int, samples=None, step: int = 0):
        """Forward+backward of every micro-batch; gradients final on return.
        `samples`: each micro-batch's global sample indices (row order) and `step` the
        training step, for layout-invariant dropout. Returns (loss_sum, count) on last
        stages, None elsewhere."""
        self.stage.train()
        self.engine.forward_context = None
        if samples is not None or self.precision != "fp32":
            self.engine.forward_context = lambda mb: self._forward_context(None if samples is None else samples[mb],
                                                                           step)
        if self.scaler is not None:  # fp16: the loss times the scale; unscaled before clipping
            self.engine.grad_scale = self.scaler.scale
        return self.engine.step(microbatches, normalizer)

    @contextmanager
    def _forward_context(self, samples, step: int):
        """Around one micro-batch's training forward: its dropout scope and autocast."""
        from .. import dropout

        with ExitStack() as stack:
            if samples is not None:
                stack.enter_context(dropout.scope(self.dropout, self.seed, step, samples))
            stack.enter_context(autocast_context(self.topo.device, self.precision))
            yield

    def clip_grad_norm_(self, max_norm: float) -> float:
        if self.shards is not None:  # ZeRO-1: this replica's reduced segments, squares summed over dp
            return self.engine.clip_grad_norm_(max_norm, grads=self.shards.grads(), dp_comm=self.topo.dp_comm)
        return self.engine.clip_grad_norm_(max_norm)

    def predict(self, microbatches, collect) -> list:
        """Forward only; `collect(output, mb)` results on the last stage, [] elsewhere."""
        return forward_only(self.stage, self.engine.p2p, microbatches, collect)

    def param_info(self) -> list[dict]:
        """What is known of each parameter this rank holds: global name, logical
        shape, local shape, its tensor-parallel split (None: replicated in the tensor
        group) and its tied group (None: not tied)."""
        from ..tp.sharding import logical_shape, split_of

        tied = {name: tuple(group) for group in self.tied for name in group}
        return [{"name": n, "logical_shape": logical_shape(p), "shape": tuple(p.shape), "split": split_of(p),
                 "replicated": split_of(p) is None and self.topo.grid.tp > 1, "tied": tied.get(n)}
                for n, p in self.stage.global_named_parameters()]

    def splits(self) -> dict:
        """Global name -> `Split` of each tensor this rank holds (None: whole here)."""
        return self.stage.global_splits()

    def logical_shapes(self) -> dict:
        """Global name -> logical shape of each tensor this rank holds (part of it)."""
        from ..tp.sharding import logical_shape

        return {k: logical_shape(t) for k, t in self.stage.global_state_dict(keep_vars=True).items()}

    def local_state(self) -> dict:
        """This rank's parameters and buffers under their global names (CPU copies;
        a tensor split over the tensor group as this rank's slice)."""
        return {k: v.detach().cpu().clone() for k, v in self.stage.global_state_dict().items()}

    def logical_state(self) -> dict:
        """Like `local_state`, with split tensors joined over the tensor group into
        their logical shape (collective over the tensor group)."""
        state = self.local_state()
        splits = self.splits()
        for name in sorted(state):
            split = splits.get(name)
            if split is not None:
                state[name] = split.join(self.topo.tp_comm.allgather(state[name]))
        return state

    def load_local_state(self, state: dict) -> None:
        """Copy values (global name -> tensor) into this rank's parameters and buffers;
        names this rank does not hold are ignored, and every name it holds must be given.
        A split tensor may be given whole (its logical shape: this rank takes its
        slice) or as this rank's slice."""
        import torch

        mine = self.stage.global_state_dict()
        missing = sorted(set(mine) - set(state))
        if missing:
            raise UsageError(f"model state: no value for {missing[:3]}; the state belongs to another model")
        splits = self.splits()
        with torch.no_grad():
            for name, tensor in mine.items():
                value, split = state[name], splits.get(name)
                if split is not None and tuple(value.shape) != tuple(tensor.shape):
                    value = split.take(value)
                tensor.copy_(value)

    def gather_state(self, root: int = 0) -> dict | None:
        """Every parameter and buffer under its global name with its logical shape, on
        world rank `root` (collected from replica 0 of each stage, split tensors joined
        over the tensor group); None elsewhere."""
        topo = self.topo
        mine = None
        if topo.coords.dp == 0:
            mine = {k: v.detach().cpu() for k, v in self.stage.global_state_dict().items()}
            splits = self.splits()
            for name in sorted(mine):
                if splits.get(name) is not None:
                    shards = topo.tp_comm.gather(mine[name], root=0)
                    mine[name] = splits[name].join(shards) if topo.coords.tp == 0 else None
            if topo.coords.tp != 0:
                mine = None
        parts = topo.world.gather(mine, root=root)
        if topo.rank != root:
            return None
        state = {}
        for part in parts:
            if part:
                state.update(part)
        return state

    def close(self) -> None:
        if self.averager is not None:
            self.averager.close()


def build_stage(specs, partition, index: int, seed: int, ctx: BuildContext) -> Stage:
    """This rank's stage; a layer that fails to build is a UsageError naming the stage's layers."""
    try:
        return Stage(specs, partition, index, seed=seed, device=ctx.device, ctx=ctx)
    except UsageError:
        raise
    except Exception as exc:
        start, end = partition.bounds[index]
        names = ", ".join(partition.names[start:end])
        raise UsageError(f"pipeline stage {index}: building its layers ({names}) raised "
                         f"{describe_exception(exc)}; fix the layer's builder (or its parallelize())") from exc


def split_microbatches(indices: np.ndarray, m: int) -> list[np.ndarray]:
    """Cut one replica's indices into m contiguous micro-batches (sizes differ by at most 1)."""
    return [part for part in np.array_split(indices, m)]
