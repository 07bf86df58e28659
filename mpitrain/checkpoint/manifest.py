"""A checkpoint directory and its manifest.

    CHECKPOINT_ROOT/
      step-00000120/          one committed checkpoint
        manifest.json         written last: format, task, layout, run state,
                              every tensor -> {file, shape, dtype, crc32}, or
                              for one split over tp -> {shape, dtype, split,
                              pieces: [{file, shape, crc32}, ...]} (`pieces.py`)
        rank-00000.h5 ...     one file per rank: its tensors (one data-parallel
                              replica writes each) and its RNG state
      latest                  the name of the newest committed checkpoint
      .tmp-step-00000140-*/   a save in progress (never loaded)

A directory is a checkpoint only once its manifest is there: the manifest is
written into the temporary directory, which is then renamed into place, and
only then does `latest` move (by rename too).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .files import CheckpointError, fsync_path

FORMAT_VERSION = 2   # the newest this reads: 1 every tensor whole, 2 tensors split over tp in pieces
MANIFEST = "manifest.json"
LATEST = "latest"
_NAME = re.compile(r"^step-(\d{8,})$")


def format_version(tp: int) -> int:
    """The format a checkpoint saved at this tp is written in (1 without tensor
    parallelism, so that it stays readable by an mpitrain that predates it)."""
    return 2 if tp > 1 else 1


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def write_json_durably(path: Path, obj) -> None:
    """Write JSON to `path` through a temporary file, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a committed checkpoint, checked to have the form the loaders
    read (`check_manifest`); a one-line CheckpointError otherwise."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory; give a step-NNNNNNNN folder "
                              "of a run's checkpoints")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the checkpoint was never committed (a save was cut "
                              "short), use an earlier one") from None
    except (OSError, ValueError, RecursionError) as e:  # ValueError: not UTF-8, bad JSON, a huge number
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e}); use an earlier "
                              "checkpoint") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if _is_int(version) and version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {version!r} is newer than this mpitrain reads "
                              f"({FORMAT_VERSION}); upgrade mpitrain to load it")
    problem = check_manifest(manifest)
    if problem:
        raise CheckpointError(f"{path}: {problem}; the manifest is corrupt, use an earlier checkpoint")
    missing = next((f for f in manifest["files"] if not (directory / f).is_file()), None)
    if missing is not None:
        raise CheckpointError(f"{directory / missing}: missing; the checkpoint is incomplete (copied in part?), "
                              "use an earlier one")
    return manifest


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _at_least(x, least: int) -> bool:
    return _is_int(x) and x >= least


def _numbers(x) -> bool:
    return isinstance(x, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x)


def _is_shape(x) -> bool:
    return isinstance(x, list) and all(_at_least(n, 0) for n in x)


def _dataset_problem(entry, files: list) -> str | None:
    """What is wrong with a stored dataset's entry {file, shape, crc32}, if anything."""
    if not isinstance(entry, dict):
        return "is not an object"
    if entry.get("file") not in files:
        return f"names file {entry.get('file')!r}, which is not among the checkpoint's files"
    if not _is_shape(entry.get("shape")) or not _is_int(entry.get("crc32")):
        return "has no shape (a list of sizes) or crc32 (an integer)"
    return None


def _tensor_problem(key: str, entry, files: list) -> str | None:
    """What is wrong with a tensor's entry (whole, or split in pieces), if anything."""
    if key.startswith("optim/") and "/" not in key[len("optim/"):]:
        return "is not named optim/<parameter>/<state>"
    if not isinstance(entry, dict) or not _is_shape(entry.get("shape")) or not isinstance(entry.get("dtype"), str):
        return "has no shape (a list of sizes) or dtype"
    if "pieces" not in entry:
        return _dataset_problem(entry, files)
    split, pieces = entry.get("split"), entry["pieces"]
    if not (isinstance(split, dict) and _at_least(split.get("dim"), 0) and _at_least(split.get("size"), 0)
            and _at_least(split.get("parts"), 1) and _at_least(split.get("chunks", 1), 1)
            and isinstance(split.get("padded", False), bool)):
        return "has pieces but no split {dim, size, parts[, chunks, padded]}"
    if not isinstance(pieces, list) or len(pieces) != split["parts"]:
        return f"has no list of {split['parts']} pieces"
    return next(filter(None, (_dataset_problem(piece, files) for piece in pieces)), None)


def check_manifest(manifest) -> str | None:
    """What makes `manifest` (parsed JSON) not a checkpoint manifest that the loaders
    can read, or None."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    version = manifest.get("format_version")
    if not _at_least(version, 1) or version > FORMAT_VERSION:
        return f"format version {version!r} is not one of 1..{FORMAT_VERSION}"
    kinds = {"task": str, "files": list, "tensors": dict, "state": dict, "layout": dict, "param_groups": list}
    for key, kind in kinds.items():
        if not isinstance(manifest.get(key), kind):
            return f"no '{key}' entry (a JSON {'string' if kind is str else kind.__name__})"
    files, state, scheduler = manifest["files"], manifest["state"], manifest["state"].get("scheduler")
    if not all(isinstance(f, str) and f == Path(f).name and f not in ("", ".", "..") for f in files):
        return "'files' is not a list of file names"
    for key, entry in manifest["tensors"].items():
        problem = _tensor_problem(key, entry, files)
        if problem:
            return f"tensor {key!r} {problem}"
    if not all(_at_least(manifest["layout"].get(k), 1) for k in ("dp", "pp", "tp", "world")):
        return "'layout' is not {dp, pp, tp, world} (positive integers)"
    groups = manifest["param_groups"]
    listed = all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
    if not listed or not all(isinstance(name, str) for g in groups for name in g["params"]):
        return "'param_groups' is not a list of groups, each with its 'params' (names)"
    if not all(_at_least(state.get(k), 0) for k in ("step", "epoch", "step_in_epoch")):
        return "'state' has no step, epoch and step_in_epoch (integers)"
    if not (isinstance(scheduler, dict) and all(_numbers(scheduler.get(k, [])) for k in ("base_lrs", "_last_lr"))
            and _is_int(scheduler.get("last_epoch", 0))):
        return "'state' has no scheduler (an object with base_lrs, _last_lr and last_epoch)"
    if not all(isinstance(state.get(k, {}), dict) for k in ("metrics", "task_state")):
        return "'state' metrics or task_state is not an object"
    if not _numbers(list(state.get("metrics", {}).values())):
        return "'state' metrics are not all numbers"
    return None


def committed(root: str | Path) -> list[Path]:
    """Committed-looking checkpoint directories under `root`, newest (highest step) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)


def latest(root: str | Path) -> Path | None:
    """The checkpoint `latest` names, if that pointer exists."""
    pointer = Path(root) / LATEST
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return Path(root) / name if _NAME.match(name) else None


def candidates(root: str | Path) -> list[Path]:
    """Where auto-resume looks, in order: `latest`, then every committed one, newest first."""
    first = latest(root)
    rest = [p for p in committed(root) if p != first]
    return ([first] if first is not None else []) + rest


def set_latest(root: Path, name: str) -> None:
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(name + "\n", encoding="utf-8")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST)
    fsync_path(root)
