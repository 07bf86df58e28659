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
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class LayerSpec:
    name: str                      # global layer name, e.g. "encoder.3"
    build: Callable[[], nn.Module]  # constructs (and may load weights into) the layer


def layer_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from the job seed and a global layer name."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def build_layer(spec: LayerSpec, seed: int, device: torch.device | str = "cpu") -> nn.Module:
    """Build one layer with an RNG seeded by (seed, spec.name), then move it to `device`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(layer_seed(seed, spec.name))
        module = spec.build()
    return module.to(device)


def as_tuple(x) -> tuple:
    """Normalise a layer's output to a tuple of tensors."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def run_layers(layers, inputs: tuple):
    """Apply layers in order (the single-process reference path)."""
    out = inputs
    for layer in layers:
        out = as_tuple(layer(*out))
    return out[0] if len(out) == 1 else out
