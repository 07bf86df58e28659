"""A model as an ordered list of named layer builders.

A pipeline model is a list of `LayerSpec`. Each layer is built only on the rank
that owns it, by `build_layer`, which seeds torch's RNG from the job seed and the
layer's *global* name: a layer starts with the same weights whichever stage or
rank builds it, so every layout trains like one process.

Layer contract: ``forward(*tensors) -> Tensor | tuple[Tensor, ...]``. The first
layer receives the micro-batch's input tuple; each later layer receives what its
predecessor returned; the last layer's output goes to the loss. Tensors that are
not floating point (e.g. an attention mask) pass through and carry no gradient.

Parameters are named globally as ``f"{layer.name}.{param_name}"`` so checkpoints
load under any partition.

Tensor parallelism (tp > 1): a layer is still built whole, then a module with a
``parallelize(ctx)`` method replaces its own sub-layers by their column-,
row- or vocabulary-parallel versions (`mpitrain.tp.layers`). A layer without
one is replicated: every shard of the tensor group computes all of it.

A builder takes no argument, or one: a `BuildContext` with the device, dtype,
the rank's grid coordinates and its communicators (a tensor-parallel layer
needs to know its shard). Without a running grid the context describes a
single process on the CPU.
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class LayerSpec:
    name: str                 # global layer name, e.g. "encoder.3"
    build: Callable[..., nn.Module]  # () or (ctx: BuildContext) -> the layer (may load its weights)


@dataclass(frozen=True)
class BuildContext:
    """What a layer builder may need to know about where it is built."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    grid: Any = None        # mpitrain.grid.Grid (dp, pp, tp); None = one process
    coords: Any = None      # this rank's Coords (dp, pp, tp)
    dp_comm: Any = None
    pp_comm: Any = None
    tp_comm: Any = None

    @property
    def tp_rank(self) -> int:
        return self.coords.tp if self.coords is not None else 0

    @property
    def tp_size(self) -> int:
        return self.grid.tp if self.grid is not None else 1

    @classmethod
    def of(cls, topo) -> "BuildContext":
        """The context of a rank of a running grid (`mpitrain.topology.Topology`)."""
        return cls(device=topo.device, grid=topo.grid, coords=topo.coords, dp_comm=topo.dp_comm,
                   pp_comm=topo.pp_comm, tp_comm=topo.tp_comm)


def takes_context(build) -> bool:
    """Whether a builder wants the build context: it has a positional parameter
    without a default (``lambda i=i: ...`` keeps taking none)."""
    try:
        params = inspect.signature(build).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind == p.VAR_POSITIONAL or (p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                                              and p.default is p.empty) for p in params)


def call_builder(spec: LayerSpec, ctx: BuildContext | None = None) -> nn.Module:
    return spec.build(ctx or BuildContext()) if takes_context(spec.build) else spec.build()


def layer_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from the job seed and a global layer name."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def build_layer(spec: LayerSpec, seed: int, device: torch.device | str = "cpu",
                ctx: BuildContext | None = None) -> nn.Module:
    """Build one layer with an RNG seeded by (seed, spec.name), then move it to `device`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(layer_seed(seed, spec.name))
        module = call_builder(spec, ctx)
    if ctx is not None and ctx.tp_size > 1:
        shard_layer(module, ctx)
    return module.to(device)


def shard_layer(module: nn.Module, ctx: BuildContext) -> None:
    """Tensor parallelism: a layer built whole (so it starts as in one process) is cut
    into this rank's shard by its `parallelize(ctx)` method, if it has one; every
    parameter it does not split is replicated in the tensor group."""
    from .tp.layers import replicate

    parallelize = getattr(module, "parallelize", None)
    if callable(parallelize):
        parallelize(ctx)
    replicate(module)


def as_tuple(x) -> tuple:
    """Normalise a layer's output to a tuple of tensors."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def run_layers(layers, inputs: tuple):
    """Apply layers in order (the single-process reference path)."""
    out = inputs
    for layer in layers:
        out = as_tuple(layer(*out))
    return out[0] if len(out) == 1 else out
