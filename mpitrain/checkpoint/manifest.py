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
    """The manifest of a committed checkpoint; a one-line CheckpointError otherwise."""
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); use an earlier checkpoint") from None
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {version!r} is newer than this mpitrain reads "
                              f"({FORMAT_VERSION}); upgrade mpitrain to load it")
    for key in ("files", "tensors", "state", "task", "layout"):
        if key not in manifest:
            raise CheckpointError(f"{path}: no '{key}' entry; the manifest is corrupt, use an earlier checkpoint")
    return manifest


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
