"""One pipeline stage: the contiguous run of layers a rank owns.

Only this stage's layers are built (with `build_layer`'s layout-independent
seeding), so the whole model never exists on one rank. Parameters are exposed
under their global names ``f"{layer.name}.{param}"``; a parameter object shared
by two layers of the same stage is listed once, under its first name.
With `recompute` set, training runs each layer under activation checkpointing.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import dropout
from ..dropout import layer as dropout_layer
from ..errors import UsageError
from ..layers import BuildContext, LayerSpec, as_tuple, build_layer
from .partition import Partition, check_shared, meta_build


class StageError(RuntimeError):
    """A layer of a stage failed; the message names the stage, micro-batch and layer."""


class Stage(nn.Module):
    def __init__(self, specs: list[LayerSpec], partition: Partition, index: int, seed: int = 0,
                 device: torch.device | str = "cpu", ctx: BuildContext | None = None):
        super().__init__()
        if [s.name for s in specs] != partition.names:
            raise UsageError("pipeline stage: the layer list differs from the one the partition was "
                             "made for; partition the same LayerSpec list you build stages from")
        if not 0 <= index < partition.num_stages:
            raise UsageError(f"pipeline stage: index {index} outside 0..{partition.num_stages - 1}; "
                             "the pipeline group must have one rank per stage")
        self.index = index
        self.num_stages = partition.num_stages
        self.start, self.end = partition.bounds[index]
        self.device = torch.device(device)
        self.layer_names = [s.name for s in specs[self.start:self.end]]
        self.layers = nn.ModuleList(build_layer(s, seed, self.device, ctx) for s in specs[self.start:self.end])
        self.recompute = False  # activation recomputation: keep each layer's inputs, rerun it in backward

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.num_stages - 1

    def global_named_parameters(self):
        """(global name, parameter) for this stage's trainable state, each parameter once."""
        seen = set()
        for name, layer in zip(self.layer_names, self.layers):
            for pname, p in layer.named_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield f"{name}.{pname}", p

    def global_state_dict(self, keep_vars: bool = False) -> dict[str, torch.Tensor]:
        out = {}
        for name, layer in zip(self.layer_names, self.layers):
            for key, t in layer.state_dict(keep_vars=keep_vars).items():
                out[f"{name}.{key}"] = t
        return out

    def global_splits(self) -> dict:
        """Global name -> its tensor-parallel `Split` (None: whole on this rank)."""
        from ..tp.sharding import split_of

        return {k: split_of(t) for k, t in self.global_state_dict(keep_vars=True).items()}

    def forward(self, *inputs, mb: int | None = None):
        """Run the stage's layers; errors are re-raised naming stage, micro-batch and layer."""
        out = inputs
        for name, layer in zip(self.layer_names, self.layers):
            try:
                with dropout_layer(name):
                    out = as_tuple(self._call(name, layer, out))
            except Exception as exc:
                where = f"stage {self.index}" + (f", micro-batch {mb}" if mb is not None else "")
                where += f", layer {name!r}"
                if isinstance(exc, UsageError):
                    raise type(exc)(f"{where}: {exc}") from exc
                shapes = ", ".join(f"{list(t.shape)} {str(t.dtype).replace('torch.', '')}"
                                   if torch.is_tensor(t) else type(t).__name__ for t in out)
                raise StageError(f"{where} (inputs: {shapes}): {type(exc).__name__}: {exc}") from exc
        return out

    def _call(self, name: str, layer: nn.Module, inputs: tuple):
        """One layer; with `recompute` (training), checkpointed: only its inputs are kept
        for backward, which runs its forward again -- inside the same dropout scope
        (mode, seed, step, samples, layer name: the same invariant masks), torch RNG
        state (torch's dropout) and autocast state as the first time."""
        if not (self.recompute and self.training and torch.is_grad_enabled()):
            return layer(*inputs)
        scope = dropout.active()
        if scope is None:
            return checkpoint(layer, *inputs, use_reentrant=False)
        saved = (scope.mode, scope.seed, scope.step, scope.samples)

        def run(*xs):
            with dropout.scope(*saved), dropout_layer(name):
                return layer(*xs)

        return checkpoint(run, *inputs, use_reentrant=False)


def check_shared_parameters(specs: list[LayerSpec], partition: Partition) -> None:
    """Refuse one parameter object reachable from layers in different stages
    (`partition` already checks the partition it makes)."""
    check_shared(partition.names, [meta_build(s) for s in specs], partition.bounds)


__all__ = ["Stage", "StageError", "check_shared_parameters"]
