"""Cut an ordered list of layers into contiguous pipeline stages.

Methods:
    "uniform"     equal layer counts (the first stages take one extra when uneven)
    "parameters"  balanced parameter counts; layers are built on the meta device to count
    "profile"     balanced measured forward+backward time on a sample batch
    [c1, c2, ...] explicit cut points: stage k starts at layer c_k (p - 1 increasing indices)

Balanced methods minimise the heaviest stage (exactly, by dynamic programming over
contiguous cuts). Every layer lands in exactly one stage and no stage is empty.
One parameter object reached from layers on different stages is refused (see
`check_shared`; declare tied weights instead, `tied.py`), and so is a tied
group whose names are not parameters of the model (`check_tied`). A builder or
a layer that raises is one UsageError naming the layer.
`profile` timings differ between processes, so `plan_partition` computes the
partition on one rank and broadcasts it.
"""
from __future__ import annotations

import difflib
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UsageError
from ..failure import describe_exception
from ..layers import LayerSpec, as_tuple, build_layer, call_builder

METHODS = ("uniform", "parameters", "profile")


@dataclass
class Partition:
    names: list[str]                      # global layer names, in order
    bounds: list[tuple[int, int]]         # per stage: [start, end) layer indices
    method: str
    layer_params: list[int] = field(default_factory=list)
    layer_times: list[float] | None = None  # seconds, forward+backward per layer ("profile")

    @property
    def num_stages(self) -> int:
        return len(self.bounds)

    def stage_of(self, layer_index: int) -> int:
        for s, (a, b) in enumerate(self.bounds):
            if a <= layer_index < b:
                return s
        raise IndexError(layer_index)

    def stage_params(self) -> list[int]:
        return [sum(self.layer_params[a:b]) for a, b in self.bounds] if self.layer_params else []

    def stage_times(self) -> list[float] | None:
        if self.layer_times is None:
            return None
        return [sum(self.layer_times[a:b]) for a, b in self.bounds]

    def plan(self) -> str:
        """A table: per stage its layers, parameter count (and measured time)."""
        params, times = self.stage_params(), self.stage_times()
        head = f"{'stage':>5}  {'layers':<32} {'params':>12}"
        if times is not None:
            head += f" {'fwd+bwd ms':>11}"
        lines = [f"pipeline partition ({self.method}): {len(self.names)} layers -> "
                 f"{self.num_stages} stages", head]
        for s, (a, b) in enumerate(self.bounds):
            span = self.names[a] if b - a == 1 else f"{self.names[a]} .. {self.names[b - 1]}"
            span = f"{span} ({b - a})"
            row = f"{s:>5}  {span:<32} {params[s] if params else '?':>12}"
            if times is not None:
                row += f" {times[s] * 1e3:>11.2f}"
            lines.append(row)
        return "\n".join(lines)


def meta_build(spec: LayerSpec) -> nn.Module | None:
    """Build a layer on the meta device (no memory), or None if the builder can't."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return call_builder(spec)
    except Exception:
        return None


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() lists each object once


def _inspectable(spec: LayerSpec, module: nn.Module | None) -> nn.Module:
    """`module` (built on the meta device), or the layer built on the CPU when the
    builder could not build it there; a builder that raises is a UsageError."""
    if module is not None:
        return module
    try:
        return build_layer(spec, seed=0)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"pipeline model: layer {spec.name!r}: its builder raised {describe_exception(exc)}; "
                         "fix the builder") from exc


def count_parameters(spec: LayerSpec, module: nn.Module | None = None) -> int:
    """Parameters of one layer, built on the meta device when the builder allows
    it, else on the CPU and freed."""
    return _numel(_inspectable(spec, module if module is not None else meta_build(spec)))


def _tied_shape(name: str, names: list[str], shapes: list[dict]) -> tuple:
    """The shape of the parameter a tied-weight name names; a UsageError if it names none."""
    from .tied import owning_layer

    layer = owning_layer(name, names)
    if layer is None:
        raise UsageError(f"tied weights: {name!r} names no layer of the model; use '<layer name>.<parameter "
                         f"name>' with a layer of: {', '.join(names)}")
    param = name[len(names[layer]) + 1:]
    if param not in shapes[layer]:
        close = difflib.get_close_matches(param, list(shapes[layer]), n=1)
        hint = (f"did you mean '{names[layer]}.{close[0]}'?" if close else
                f"its parameters: {', '.join(sorted(shapes[layer])) or 'none'}")
        raise UsageError(f"tied weights: layer {names[layer]!r} has no parameter {param!r}; {hint}")
    return shapes[layer][param]


def check_tied(tied, names: list[str], shapes: list[dict]) -> None:
    """Every name of every tied group is a parameter of the model (`shapes[i]`: layer
    i's parameter names -> shapes), and the members of a group have one shape."""
    for group in tied:
        group = tuple(group) if isinstance(group, (list, tuple)) else (group,)
        if not all(isinstance(n, str) for n in group) or len(group) < 2 or len(set(group)) != len(group):
            raise UsageError(f"tied weights {group!r}: a group needs two or more distinct parameter names")
        found = [_tied_shape(name, names, shapes) for name in group]
        for name, shape in zip(group[1:], found[1:]):
            if shape != found[0]:
                raise UsageError(f"tied weights: {name!r} has shape {list(shape)} but {group[0]!r} has "
                                 f"{list(found[0])}; tied parameters must have one shape")


def check_shared(names: list[str], modules: list, bounds: list[tuple[int, int]]) -> None:
    """Refuse one parameter object reachable from layers in different stages: it
    would silently become independent copies, one per rank. On the meta device
    only parameters created outside the builders (captured modules, the way
    sharing happens) keep their identity; `modules[i]` None is skipped."""
    stage_of = [s for s, (a, b) in enumerate(bounds) for _ in range(a, b)]
    owner: dict[int, tuple[str, str, int]] = {}
    for i, module in enumerate(modules):
        if module is None:
            continue
        for pname, p in module.named_parameters(remove_duplicate=False):
            first = owner.setdefault(id(p), (names[i], pname, stage_of[i]))
            if first[2] != stage_of[i]:
                raise UsageError(
                    f"pipeline model: layers {first[0]!r} (stage {first[2]}) and {names[i]!r} "
                    f"(stage {stage_of[i]}) share one parameter ({first[0]}.{first[1]} is "
                    f"{names[i]}.{pname}); a parameter cannot span stages: put both layers in one "
                    f"stage with explicit cut points, or give each layer its own weight and declare "
                    f"them tied (PipelineEngine(tied=[(\"{first[0]}.{first[1]}\", \"{names[i]}.{pname}\")]))")


def balanced_cuts(weights: list[float], num_stages: int) -> list[tuple[int, int]]:
    """Contiguous non-empty stages minimising the heaviest stage's total weight
    (ties broken by the smaller sum of squared stage weights)."""
    n = len(weights)
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + float(w))
    inf = (float("inf"), float("inf"))
    # best[k][j]: (max, sumsq) cutting the first j layers into k stages; arg[k][j]: start of stage k
    best = [[inf] * (n + 1) for _ in range(num_stages + 1)]
    arg = [[0] * (n + 1) for _ in range(num_stages + 1)]
    best[0][0] = (0.0, 0.0)
    for k in range(1, num_stages + 1):
        for j in range(k, n - (num_stages - k) + 1):
            for i in range(k - 1, j):
                prev = best[k - 1][i]
                if prev == inf:
                    continue
                w = prefix[j] - prefix[i]
                cand = (max(prev[0], w), prev[1] + w * w)
                if cand < best[k][j]:
                    best[k][j], arg[k][j] = cand, i
    bounds, j = [], n
    for k in range(num_stages, 0, -1):
        i = arg[k][j]
        bounds.append((i, j))
        j = i
    return bounds[::-1]


def uniform_cuts(n: int, num_stages: int) -> list[tuple[int, int]]:
    base, extra = divmod(n, num_stages)
    bounds, start = [], 0
    for s in range(num_stages):
        size = base + (1 if s < extra else 0)
        bounds.append((start, start + size))
        start += size
    return bounds


def explicit_cuts(cuts, n: int, num_stages: int) -> list[tuple[int, int]]:
    cuts = list(cuts)
    if len(cuts) != num_stages - 1 or not all(isinstance(c, int) for c in cuts):
        raise UsageError(f"pipeline partition: {len(cuts)} cut points {cuts} for {num_stages} stages; "
                         f"give {num_stages - 1} integer layer indices where stages 1..{num_stages - 1} start")
    edges = [0] + cuts + [n]
    for s in range(num_stages):
        if not edges[s] < edges[s + 1]:
            raise UsageError(f"pipeline partition: cut points {cuts} leave stage {s} empty (or out of "
                             f"order); use strictly increasing indices between 1 and {n - 1}")
    return [(edges[s], edges[s + 1]) for s in range(num_stages)]


def profile_layers(specs: list[LayerSpec], sample: tuple, seed: int = 0, repeats: int = 3,
                   device: torch.device | str = "cpu") -> list[float]:
    """Median forward+backward seconds of each layer on `sample` (the first layer's
    input tuple). Layers are built one at a time and freed; each layer's output,
    detached, is the next layer's input."""
    times = []
    x = tuple(t.to(device) for t in sample)
    for spec in specs:
        layer = build_layer(spec, seed, device)
        runs, out = [], None
        for _ in range(repeats + 1):
            inputs = tuple(t.detach().requires_grad_(t.is_floating_point()) for t in x)
            start = time.perf_counter()
            try:
                out = as_tuple(layer(*inputs))
                floats = [o for o in out if o.requires_grad]
                if floats:
                    torch.autograd.backward(floats, [torch.ones_like(o) for o in floats])
            except Exception as exc:
                raise UsageError(f"pipeline partition 'profile': layer {spec.name!r} failed on the sample "
                                 f"batch: {describe_exception(exc)}; fix the layer, or use partition = "
                                 "'parameters'") from exc
            runs.append(time.perf_counter() - start)
        times.append(statistics.median(runs[1:]))  # the first run warms up
        x = tuple(o.detach() for o in out)
        del layer
    return times


def partition(specs: list[LayerSpec], num_stages: int, method="uniform", *, sample: tuple | None = None,
              seed: int = 0, device: torch.device | str = "cpu", tied=()) -> Partition:
    """Assign layers to `num_stages` contiguous stages (see the module doc); `tied`:
    the model's groups of tied parameter names, checked against its layers."""
    n = len(specs)
    names = [s.name for s in specs]
    if len(set(names)) != n:
        dup = next(x for x in names if names.count(x) > 1)
        raise UsageError(f"pipeline model: layer name {dup!r} is used twice; give every layer a unique name")
    if not isinstance(num_stages, int) or num_stages < 1:
        raise UsageError(f"pipeline partition: num_stages={num_stages!r}; use a positive integer (pp)")
    if num_stages > n:
        raise UsageError(f"pipeline partition: {num_stages} stages but the model has only {n} layers; "
                         f"use pp <= {n} or split the model into more layers")
    modules = [meta_build(s) for s in specs]
    params, shapes = [], []
    for spec, module in zip(specs, modules):  # built on the CPU one at a time when not on meta
        layer = _inspectable(spec, module)
        params.append(_numel(layer))
        shapes.append({pname: tuple(p.shape) for pname, p in layer.named_parameters(remove_duplicate=False)})
        del layer
    check_tied(tied, names, shapes)
    times = None
    if isinstance(method, (list, tuple)):
        bounds, label = explicit_cuts(method, n, num_stages), f"cuts {list(method)}"
    elif method == "uniform":
        bounds, label = uniform_cuts(n, num_stages), method
    elif method == "parameters":
        bounds, label = balanced_cuts(params, num_stages), method
    elif method == "profile":
        if sample is None:
            raise UsageError("pipeline partition 'profile': no sample batch; pass sample=(inputs...) "
                             "or use 'parameters'")
        times = profile_layers(specs, sample, seed=seed, device=device)
        bounds, label = balanced_cuts(times, num_stages), method
    else:
        raise UsageError(f"pipeline partition method {method!r} is unknown; use one of "
                         f"{', '.join(METHODS)} or a list of cut points")
    check_shared(names, modules, bounds)
    return Partition(names=names, bounds=bounds, method=label, layer_params=params, layer_times=times)


def plan_partition(specs: list[LayerSpec], num_stages: int, method="uniform", comm=None, root: int = 0,
                   **kwargs) -> Partition:
    """`partition` computed on `root` of `comm` and broadcast, so every rank agrees
    (needed for "profile", whose timings differ between processes)."""
    if comm is None or comm.Get_size() == 1:
        return partition(specs, num_stages, method, **kwargs)
    result = None
    error = None
    if comm.Get_rank() == root:
        try:
            result = partition(specs, num_stages, method, **kwargs)
        except UsageError as exc:
            error = str(exc)
    error, result = comm.bcast((error, result), root=root)
    if error is not None:
        raise UsageError(error)
    return result
