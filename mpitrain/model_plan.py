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
    return [head + note, part.plan()]
