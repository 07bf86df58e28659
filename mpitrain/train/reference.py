"""A task's model as one plain PyTorch model in one process: every layer built as
the engine builds it (same seeds), tied weights made one parameter. This is the
"one process" that every layout must train exactly like, and the plain loop the
benchmarks compare with."""
from __future__ import annotations

from torch import nn

from ..dropout import layer as dropout_layer
from ..layers import as_tuple, build_layer
from ..pipeline.tied import owning_layer


class SingleProcessModel(nn.Module):
    def __init__(self, spec, seed: int, device="cpu"):
        """`spec`: a task's `Model` (layers, loss, tied)."""
        super().__init__()
        self.names = [s.name for s in spec.layers]
        self.layers = nn.ModuleList(build_layer(s, seed, device) for s in spec.layers)
        for group in spec.tied:
            first = self.parameter(group[0])
            for other in group[1:]:
                self._set_parameter(other, first)

    def _locate(self, name: str):
        i = owning_layer(name, self.names)
        if i is None:
            raise KeyError(f"{name!r} names no layer of the model")
        module_path, _, attr = name[len(self.names[i]) + 1:].rpartition(".")
        return (self.layers[i].get_submodule(module_path) if module_path else self.layers[i]), attr

    def parameter(self, name: str) -> nn.Parameter:
        module, attr = self._locate(name)
        return getattr(module, attr)

    def _set_parameter(self, name: str, param: nn.Parameter) -> None:
        module, attr = self._locate(name)
        setattr(module, attr, param)

    def global_named_parameters(self, remove_duplicate: bool = True):
        """(global name, parameter); a tied weight once (its first name) unless asked for all."""
        seen = set()
        for name, layer in zip(self.names, self.layers):
            for pname, p in layer.named_parameters(remove_duplicate=False):
                if remove_duplicate and id(p) in seen:
                    continue
                seen.add(id(p))
                yield f"{name}.{pname}", p

    def forward(self, *inputs):
        out = inputs
        for name, layer in zip(self.names, self.layers):
            with dropout_layer(name):
                out = as_tuple(layer(*out))
        return out[0] if len(out) == 1 else out
