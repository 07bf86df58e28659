"""Loading a checkpoint into a Trainer, on any layout.

Every rank reads the manifest and then only the tensors it holds, by global
name, from whichever files hold them: nothing depends on the layout the
checkpoint was written with. Shapes are logical; a tensor split over the
tensor group is read as this rank's slice -- only its own piece when the
checkpoint was split the same way, else the pieces joined (or the whole
tensor) and sliced (`pieces.py`). Everything is read and verified (shape, dtype,
checksum) into memory first; all ranks agree it succeeded; only then is the
trainer changed. RNG states and epoch accumulators are per rank, so they are
restored only when the layout is the same (then the resumed run is bitwise the
uninterrupted one); on another layout training continues from the same
parameters, optimizer state, schedule and data position.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .files import CheckpointError, close_all, read_rank_state
from .manifest import candidates, read_manifest
from .pieces import read_local


def _layout(trainer) -> dict:
    g = trainer.topo.grid
    return {"dp": g.dp, "pp": g.pp, "tp": g.tp, "world": trainer.topo.size}


def check_compatible(trainer, manifest: dict, directory: Path, all_names: list[str]) -> None:
    """The checkpoint holds exactly this model's tensors with these (logical) shapes, for this task."""
    where = directory / "manifest.json"
    if manifest["task"] != trainer.cfg.job.task:
        raise CheckpointError(f"{where}: a checkpoint of task {manifest['task']!r}, not {trainer.cfg.job.task!r}; "
                              "load it with its own job")
    saved = {k[len("model/"):]: v for k, v in manifest["tensors"].items() if k.startswith("model/")}
    shapes = dict(all_names)
    for name in sorted(shapes):
        if name not in saved:
            raise CheckpointError(f"{where}: no tensor {name!r}; the checkpoint belongs to another model")
        if tuple(saved[name]["shape"]) != shapes[name]:
            raise CheckpointError(f"{where}: {name!r} has shape {saved[name]['shape']}, the model has "
                                  f"{list(shapes[name])}; the checkpoint belongs to another model")
    extra = sorted(set(saved) - set(shapes))
    if extra:
        raise CheckpointError(f"{where}: tensor {extra[0]!r} is not in the model; the checkpoint belongs "
                              "to another model")
    mine, theirs = trainer.task_state(), manifest["state"].get("task_state", {})
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            raise CheckpointError(f"{where}: task state {key!r} differs ({theirs.get(key)!r} in the checkpoint, "
                                  f"{mine.get(key)!r} now); resume with the data it was trained on")


def read_part(trainer, directory: Path, manifest: dict, all_names, with_optimizer: bool) -> dict:
    """This rank's tensors (and RNG when the layout matches), verified, in memory."""
    check_compatible(trainer, manifest, directory, all_names)
    files: dict = {}
    tensors, splits = manifest["tensors"], trainer.model.splits()
    shapes = trainer.model.logical_shapes()
    try:
        model = {name: read_local(directory, f"model/{name}", tensors[f"model/{name}"], files, splits[name])
                 for name in trainer.model.stage.global_state_dict()}
        optim = {}
        if with_optimizer:
            for key, entry in tensors.items():
                if key.startswith("optim/"):
                    name, stat = key[len("optim/"):].rsplit("/", 1)
                    if name in model:
                        # a per-element stat of a split parameter is split like it; a scalar is whole
                        split = splits[name] if tuple(entry["shape"]) == tuple(shapes[name]) else None
                        optim.setdefault(name, {})[stat] = read_local(directory, key, entry, files, split)
    finally:
        close_all(files)
    part = {"model": model, "optim": optim, "rng": None}
    if manifest["layout"] == _layout(trainer):
        path = directory / f"rank-{trainer.topo.rank:05d}.h5"
        try:
            part["rng"], attrs = read_rank_state(path)
            part["totals"] = (float(attrs["loss_sum"]), int(attrs["loss_count"]), int(attrs["tokens"]))
        except (OSError, KeyError) as e:
            raise CheckpointError(f"{path}: cannot be read ({e}); use an earlier checkpoint") from None
    return part


def apply(trainer, manifest: dict, part: dict, with_optimizer: bool) -> None:
    from ..train.state import load_optimizer_state

    trainer.model.load_local_state(part["model"])
    if not with_optimizer:
        return
    saved = {"param_groups": manifest["param_groups"], "state": part["optim"]}
    load_optimizer_state(trainer.optimizer, trainer.model.named_parameters(), saved, copy=False)
    state = manifest["state"]
    trainer.step, trainer.epoch, trainer.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
    sched = dict(state["scheduler"])
    n = len(trainer.optimizer.param_groups)
    for key in ("base_lrs", "_last_lr"):
        if key in sched and len(sched[key]) != n:  # another layout: a stage may have fewer groups
            sched[key] = [sched[key][0]] * n
    sched["lr_lambdas"] = [None] * n  # the schedule's function comes from the job, not the file
    trainer.scheduler.load_state_dict(sched)
    for group, lr in zip(trainer.optimizer.param_groups, trainer.scheduler.get_last_lr()):
        group["lr"] = lr
    scaler = getattr(trainer.model, "scaler", None)  # fp16: the same loss scale on every rank
    if scaler is not None and "loss_scale" in state:
        scaler.load_state_dict(state["loss_scale"])
    if part["rng"] is not None:
        from . import rng

        rng.restore(part["rng"])
        trainer.epoch_totals.restore(*part["totals"])


def load_into(trainer, directory: Path, with_optimizer: bool = True) -> dict:
    """Load one checkpoint (collective). A failure on any rank is raised on every
    rank as the same CheckpointError, and the trainer is left unchanged."""
    world = trainer.topo.world
    all_names = model_shapes(trainer)
    error, part, manifest = None, None, None
    try:
        manifest = read_manifest(directory)
        part = read_part(trainer, Path(directory), manifest, all_names, with_optimizer)
    except UsageError as e:
        error = str(e)
    errors = world.allgather(error)
    first = next((e for e in errors if e), None)
    if first:
        raise CheckpointError(first)
    apply(trainer, manifest, part, with_optimizer)
    return manifest


def model_shapes(trainer) -> list[tuple[str, tuple]]:
    """(global name, logical shape) of every parameter and buffer of the whole model (collective)."""
    mine = sorted(trainer.model.logical_shapes().items())
    if trainer.topo.coords.dp != 0 or trainer.topo.coords.tp != 0:
        mine = []
    merged = {}
    for part in trainer.topo.world.allgather(mine):
        merged.update(dict(part))
    return sorted(merged.items())


def resume_latest(trainer, root: Path, log) -> Path | None:
    """Load the newest valid checkpoint under `root`, skipping (and saying why)
    any that cannot be loaded. None when there is none (collective)."""
    paths = trainer.topo.world.bcast(candidates(root) if trainer.topo.rank == 0 else None, root=0)
    for directory in paths:
        try:
            load_into(trainer, directory)
        except CheckpointError as e:
            if trainer.topo.rank == 0:
                log.warning(f"checkpoint {directory.name} skipped: {e}")
            continue
        return directory
    return None

