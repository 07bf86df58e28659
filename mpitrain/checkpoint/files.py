"""The files of a checkpoint: one HDF5 file per rank, written and read with a
checksum per dataset, and fsync of files and directories.

A tensor is stored under its key (``model/<global name>`` or
``optim/<global name>/<state>``) with its logical shape -- or, split over the
tensor group, as one piece per shard, each under the same key in the file of
the rank that wrote it (`pieces.py`); bfloat16, which numpy lacks, is stored as
its 16-bit pattern and named in the manifest's dtype.
"""
from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import UsageError


class CheckpointError(UsageError):
    """A checkpoint that cannot be used: one line naming the file and dataset."""


def to_array(t: torch.Tensor, out: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """(host array, dtype name) of a tensor: a copy, safe to write while training goes
    on, into `out` when it fits (reused buffers copy without page faults)."""
    t = t.detach()
    name = str(t.dtype).removeprefix("torch.")
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    if out is not None and out.shape == tuple(t.shape) and out.dtype == torch.empty(0, dtype=t.dtype).numpy().dtype:
        torch.from_numpy(out).copy_(t)
        return out, name
    return t.to("cpu", copy=True).contiguous().numpy(), name


def from_array(a: np.ndarray, dtype: str) -> torch.Tensor:
    """A tensor over a freshly read array (no copy)."""
    t = torch.from_numpy(a if a.ndim and a.flags.writeable else np.array(a))
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


def checksum(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8)) & 0xFFFFFFFF


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_rank_file(path: Path, tensors: dict[str, tuple[np.ndarray, str]], rng: dict[str, np.ndarray],
                    attrs: dict) -> dict[str, dict]:
    """Write one rank's file (tensors, its RNG state, attributes) and fsync it.
    Returns the manifest entries {key: {file, shape, dtype, crc32}}."""
    entries = {}
    with ThreadPoolExecutor(max_workers=1) as pool:  # zlib releases the GIL: checksums overlap the writes
        sums = {key: pool.submit(checksum, array) for key, (array, _) in tensors.items()}
        with h5py.File(path, "w", libver="latest") as f:
            for key, (array, dtype) in tensors.items():
                f.create_dataset(key, data=array)
                entries[key] = {"file": path.name, "shape": list(array.shape), "dtype": dtype}
            for key, array in rng.items():
                f.create_dataset(f"rng/{key}", data=array)
            for key, value in attrs.items():
                f.attrs[key] = value
        for key, entry in entries.items():
            entry["crc32"] = sums[key].result()
    fsync_path(path)
    return entries


def read_tensor(directory: Path, key: str, entry: dict, files: dict) -> torch.Tensor:
    """One stored dataset, checked against its entry {file, shape, dtype, crc32} (a
    whole tensor's manifest entry, or one piece of a split one)."""
    path = directory / entry["file"]
    where = f"{path}: dataset {key}"
    try:
        f = files.get(path) or files.setdefault(path, h5py.File(path, "r"))
        dataset = f[key]
        array = np.empty(dataset.shape, dataset.dtype)
        if array.ndim and array.size:
            dataset.read_direct(array)
        elif array.size:
            array[...] = dataset[()]
    except (OSError, KeyError) as e:
        raise CheckpointError(f"{where}: cannot be read ({e}); the file is truncated or corrupt, use an "
                              "earlier checkpoint") from None
    if list(array.shape) != entry["shape"]:
        raise CheckpointError(f"{where}: shape {list(array.shape)} but the manifest says {entry['shape']}; "
                              "the file is corrupt, use an earlier checkpoint")
    if checksum(array) != entry["crc32"]:
        raise CheckpointError(f"{where}: checksum mismatch; the file is corrupt, use an earlier checkpoint")
    return from_array(array, entry["dtype"])


def read_rank_state(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """A rank file's RNG states and attributes (epoch accumulators)."""
    with h5py.File(path, "r") as f:
        rng = {k: f["rng"][k][()] for k in f["rng"]} if "rng" in f else {}
        return rng, dict(f.attrs)


def close_all(files: dict) -> None:
    for f in files.values():
        f.close()
    files.clear()
