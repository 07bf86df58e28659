"""Tensors split over the tensor-parallel group, in a checkpoint.

A tensor split over tp (``param.tp_split``, and the per-element optimizer state
of such a parameter) is written as one piece per tp shard, each shard's slice
under the tensor's key in the file of the rank that wrote it. Its manifest
entry names the logical tensor and its pieces, in shard order:

    {"shape": logical shape, "dtype": ..., "split": Split.to_json(),
     "pieces": [{"file", "shape", "crc32"}, ...]}

A whole tensor keeps the plain entry {"file", "shape", "dtype", "crc32"}. A
loader joins the pieces (`Split.join`) into the logical tensor and takes its own
slice for its tp, so a checkpoint loads on any tp that divides the tensors.
Replicated tensors are written once per stage, by one rank of its dp x tp
group; the pieces of a split one by one dp replica of each shard.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UsageError
from ..tp.sharding import Split
from .files import CheckpointError, read_tensor


def writer_of(sizes: dict[str, int], replicas: int, tp: int = 1, split=frozenset()) -> dict:
    """Which rank of a stage, (dp replica, tp shard), writes each tensor: the biggest
    first, each to the least-loaded rank that holds it -- a shard of a split tensor
    (`split`: its keys) to a replica of that shard, a replicated one to any rank
    of the stage. Returns {(key, shard): (dp, tp)}, shard 0 for a whole tensor
    (the same answer on every rank of the stage: shards of a split tensor are the
    same size)."""
    load = {(d, t): 0 for t in range(tp) for d in range(replicas)}
    items = [(key, t) for key in sizes for t in (range(tp) if key in split else (0,))]
    owner = {}
    for key, shard in sorted(items, key=lambda it: (-sizes[it[0]], it[0], it[1])):
        ranks = [(d, shard) for d in range(replicas)] if key in split else list(load)
        r = min(ranks, key=lambda rk: (load[rk], rk[1], rk[0]))
        owner[(key, shard)] = r
        load[r] += sizes[key]
    return owner


def tensor_splits(tensors: dict[str, torch.Tensor], model_splits: dict, params: dict) -> dict[str, Split]:
    """{key: Split} of the split tensors among checkpoint keys: ``model/<name>`` of
    a split parameter or buffer, and ``optim/<name>/<stat>`` of a split parameter
    when the stat has the parameter's (local) shape (not a scalar `step`)."""
    out = {}
    for key, t in tensors.items():
        if key.startswith("model/"):
            split = model_splits.get(key[len("model/"):])
        else:
            name = key[len("optim/"):].rsplit("/", 1)[0]
            split = model_splits.get(name)
            if split is not None and (name not in params or tuple(t.shape) != tuple(params[name].shape)):
                split = None
        if split is not None:
            out[key] = split
    return out


def mark_pieces(entries: dict, splits: dict[str, Split]) -> dict:
    """A rank file's entries, each piece of a split tensor marked with its split,
    shard and logical shape (for `merge_entries`)."""
    for key, entry in entries.items():
        if key in splits:
            s = splits[key]
            logical = [s.size if d == s.dim else n for d, n in enumerate(entry["shape"])]
            entry["piece_of"] = {"split": s.to_json(), "shard": s.rank, "shape": logical}
    return entries


def merge_entries(parts: list[dict]) -> dict:
    """Every rank file's entries -> the manifest's tensors. Raises OSError when a
    split tensor misses a piece (nothing is committed then)."""
    tensors = {}
    for entries in parts:
        for key, entry in entries.items():
            piece_of = entry.pop("piece_of", None)
            if piece_of is None:
                tensors[key] = entry
                continue
            merged = tensors.setdefault(key, {"shape": piece_of["shape"], "dtype": entry["dtype"],
                                              "split": piece_of["split"],
                                              "pieces": [None] * piece_of["split"]["parts"]})
            merged["pieces"][piece_of["shard"]] = {k: entry[k] for k in ("file", "shape", "crc32")}
    for key, entry in tensors.items():
        if "pieces" in entry and None in entry["pieces"]:
            raise OSError(f"{key}: shard {entry['pieces'].index(None)} of {len(entry['pieces'])} was not "
                          "written")
    return tensors


def _split(directory: Path, key: str, entry: dict, rank: int = 0) -> Split:
    """The split of a manifest entry, checked: its pieces make its shape."""
    where = f"{directory / 'manifest.json'}: {key}"
    try:
        split, shape = Split.from_json(entry["split"], rank), tuple(entry["shape"])
        ok = len(entry["pieces"]) == split.parts and shape[split.dim] == split.size and all(
            tuple(piece["shape"]) == split.at(i).local_shape(shape) for i, piece in enumerate(entry["pieces"]))
    except (KeyError, TypeError, IndexError, ValueError, UsageError) as e:
        raise CheckpointError(f"{where}: a bad split entry ({type(e).__name__}: {e}); the manifest is corrupt, "
                              "use an earlier checkpoint") from None
    if not ok:
        raise CheckpointError(f"{where}: its pieces do not make shape {entry['shape']}; the manifest is "
                              "corrupt, use an earlier checkpoint")
    return split


def _pieces(entry: dict) -> list[dict]:
    return [{**piece, "dtype": entry["dtype"]} for piece in entry["pieces"]]


def datasets(directory: Path, key: str, entry: dict) -> list[dict]:
    """The stored datasets of a manifest entry, each {file, shape, dtype, crc32}: the
    entry itself, or the pieces of a split tensor (checked to make its shape)."""
    if "pieces" not in entry:
        return [entry]
    _split(directory, key, entry)
    return _pieces(entry)


def read_logical(directory: Path, key: str, entry: dict, files: dict) -> torch.Tensor:
    """A tensor with its logical shape: read whole, or its pieces read, verified and joined."""
    if "pieces" not in entry:
        return read_tensor(directory, key, entry, files)
    split = _split(directory, key, entry)
    return split.join([read_tensor(directory, key, d, files) for d in _pieces(entry)])


def read_local(directory: Path, key: str, entry: dict, files: dict, split: Split | None) -> torch.Tensor:
    """This rank's value of a tensor it holds split as `split` (None: whole): only
    its own piece when the checkpoint was split the same way, else the slice of
    the logical tensor."""
    if split is None:
        return read_logical(directory, key, entry, files)
    if "pieces" in entry and _split(directory, key, entry, split.rank) == split:
        return read_tensor(directory, key, _pieces(entry)[split.rank], files)
    return split.take(read_logical(directory, key, entry, files))
