"""The model part of `plan`: which layers each pipeline stage holds, with parameter
counts (and measured forward+backward times for partition = 'profile'), for any
task. The task describes its model from the configuration alone (`prepared` is
None: nothing is prepared in a dry run)."""
from __future__ import annotations

from .errors import UsageError


def describe_stages(cfg) -> list[str]:
    from .pipeline.partition import partition

    try:
        model = cfg.task.model(cfg, None)
    except UsageError as exc:
        return [f"model: not shown ({exc})"]
    if model is None:
        return []
    p = cfg.pipeline
    method = list(p.cuts) if p.partition == "cuts" else p.partition
    note = ""
    if method == "profile" and model.sample is None:
        method, note = "parameters", " (profile needs a sample batch; shown by parameter count)"
    part = partition(model.layers, cfg.grid.pp, method, sample=model.sample, seed=cfg.job.seed)
    total = sum(part.layer_params)
    head = f"model: {model.description + ', ' if model.description else ''}{total:,} parameters"
    if model.tied:
        head += f"; tied: {', '.join(' = '.join(g) for g in model.tied)}"
    lines = [head + note, part.plan(), optimizer_state_line(cfg, part.stage_params())]
    if cfg.grid.tp > 1:
        lines += shard_lines(model.layers, part, cfg.grid.tp)
    return lines


def optimizer_state_line(cfg, stage_params: list[int]) -> str:
    """The optimizer state each rank holds, per stage (fp32 parameters), and whether
    ZeRO-1 shards it over the data-parallel group."""
    t, g = cfg.train, cfg.grid
    values = {"adamw": 2, "sgd": 1 if t.momentum else 0}.get(t.optimizer, 0)
    zero = cfg.comm.zero == 1 and g.dp > 1
    share = g.tp * (g.dp if zero else 1)
    per = ", ".join(f"stage {s} {values * 4 * n / share / 2**20:.2f} MiB" for s, n in enumerate(stage_params))
    how = f"zero 1: sharded over dp {g.dp}" if zero else "zero 0: whole on every replica"
    about = "about " if g.tp > 1 else ""  # parameters replicated in the tensor group are not divided by tp
    return f"optimizer state per rank ({t.optimizer}, {values} fp32 values per parameter; {how}): {about}{per}"


class _PlanComm:
    """Stands in for shard 0's tensor communicator when layers are cut on the meta
    device (cutting communicates nothing)."""

    def __init__(self, size: int):
        self.size = size

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return self.size


def shard_lines(specs, part, tp: int) -> list[str]:
    """Per stage, parameters per tensor shard; then each kind of split tensor
    (layer indices as '*') with its logical and shard shapes."""
    import re

    import torch

    from .layers import BuildContext, shard_layer
    from .pipeline.partition import meta_build
    from .tp.sharding import logical_shape, split_of

    ctx = BuildContext(tp_comm=_PlanComm(tp), grid=_Grid(tp))
    per_stage = [[0, 0] for _ in part.bounds]   # (split params per shard, replicated params)
    kinds = {}
    for i, spec in enumerate(specs):
        module = meta_build(spec)
        if module is None:
            return [f"tensor shards: not shown (layer {spec.name!r} cannot be built on the meta device)"]
        try:
            with torch.device("meta"):
                shard_layer(module, ctx)
        except UsageError as exc:
            return [f"tensor shards: {exc}"]
        stage = part.stage_of(i)
        for pname, t in module.named_parameters():
            split = split_of(t)
            per_stage[stage][0 if split else 1] += t.numel()
            if split:
                kind = re.sub(r"\.\d+(?=\.|$)", ".*", f"{spec.name}.{pname}")
                kinds.setdefault(kind, (logical_shape(t), tuple(t.shape), split))
    lines = ["", f"tensor shards (tp = {tp}): per shard, split parameters + replicated ones",
             f"{'stage':>5}  {'per shard':>12} {'split':>12} {'replicated':>12}"]
    for s, (split, whole) in enumerate(per_stage):
        lines.append(f"{s:>5}  {split + whole:>12,} {split:>12,} {whole:>12,}")
    lines.append("split tensors (logical shape -> shard shape, split dimension):")
    for kind, (logical, local, split) in kinds.items():
        extra = f", {split.chunks} blocks" if split.chunks > 1 else ""
        extra += ", padded" if split.padded and split.size % tp else ""
        lines.append(f"  {kind:<40} {list(logical)} -> {list(local)}, dim {split.dim}{extra}")
    return lines


class _Grid:
    def __init__(self, tp: int):
        self.dp, self.pp, self.tp = 1, 1, tp
