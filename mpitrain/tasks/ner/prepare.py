"""CoNLL splits -> one HDF5 file per split, tokenized and labelled.

File layout (format version `FORMAT_VERSION`), no padding on disk:

* ``token_ids``   int32 [total pieces]   all sentences back to back
* ``labels``      int16 (int32 for > 32k tags) [total pieces], -100 = not labelled
* ``word_starts`` uint8 [total pieces], 1 at the first piece of each word
* ``offsets``     int64 [sentences], ``lengths`` int32 [sentences]
* ``source_line`` int64 [sentences], line of each sentence's first token
* attrs: ``format_version``, ``labels`` (JSON list), ``source_sha256``,
  ``tokenizer_sha256``, ``max_len``, ``label_all_subtokens``, ``strip_prefix``,
  ``pad_id``, ``source_path``, ``n_sentences``, ``n_truncated``

A file whose attrs match the current inputs is reused; otherwise it is rebuilt
into a temporary file in the same directory and moved into place with
`os.replace`, so a reader never sees a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numpy as np

from mpitrain.errors import DataError, UsageError
from mpitrain.tasks.ner.conll import Sentence, data_error, read_conll
from mpitrain.tasks.ner.tokenize import EncodedSplit, WordPieceTokenizer, load_tokenizer

FORMAT_VERSION = 1
SPLITS = ("train", "dev", "test")
_SUFFIXES = ("", ".txt", ".conll", ".iob", ".iob2", ".tsv")
_ORDER = {"B": 0, "I": 1, "E": 2, "S": 3, "L": 4, "U": 5}


def collect_labels(sentences: Iterable[Sentence]) -> list[str]:
    """The tag set of a split: ``O`` first, then per entity type (sorted) its
    B- and I- tags (both always, so a type seen only as I- still has B-), then
    any E-/S-/L-/U- tags that occur."""
    seen: set[str] = set()
    for s in sentences:
        seen.update(s.tags)
    types = sorted({t[2:] for t in seen if t != "O"})
    out = ["O"]
    for typ in types:
        for p in sorted(_ORDER, key=_ORDER.get):
            tag = f"{p}-{typ}"
            if p in "BI" or tag in seen:
                out.append(tag)
    return out


def check_tags(sentences: Iterable[Sentence], labels: Sequence[str], path) -> None:
    """Raise `DataError` at the first tag not in ``labels``, naming file and line."""
    known = set(labels)
    for s in sentences:
        for i, tag in enumerate(s.tags):
            if tag not in known:
                raise data_error(path, s.line + i, f"tag {tag!r} is not in the training tag set "
                                 f"({', '.join(labels)})",
                                 "fix the tag, or list every tag in the job file's labels")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _continuation(labels: Sequence[str]) -> list[int]:
    index = {t: i for i, t in enumerate(labels)}
    return [index.get("I-" + t[2:], i) if t.startswith("B-") else i for i, t in enumerate(labels)]


def _wanted_attrs(source_sha, tokenizer, labels, max_len, label_all, strip_prefix) -> dict:
    return {"format_version": FORMAT_VERSION, "labels": json.dumps(list(labels)),
            "source_sha256": source_sha, "tokenizer_sha256": tokenizer.sha256,
            "max_len": int(max_len), "label_all_subtokens": bool(label_all),
            "strip_prefix": bool(strip_prefix)}


def _is_current(out_path: Path, wanted: dict) -> bool:
    if not out_path.is_file():
        return False
    try:
        with h5py.File(out_path, "r") as f:
            have = {k: f.attrs.get(k) for k in wanted}
    except (OSError, KeyError):
        return False
    def same(a, b):
        if isinstance(a, bytes):
            a = a.decode()
        return type(a) is not np.ndarray and a == b
    return all(same(have[k], v) for k, v in wanted.items())


def _write(tmp: Path, enc: EncodedSplit, sentences, attrs: dict, n_labels: int) -> None:
    label_type = np.int16 if n_labels < np.iinfo(np.int16).max else np.int32
    with h5py.File(tmp, "w") as f:
        f.create_dataset("token_ids", data=enc.token_ids)
        f.create_dataset("labels", data=enc.labels.astype(label_type))
        f.create_dataset("word_starts", data=enc.word_starts)
        f.create_dataset("offsets", data=enc.offsets)
        f.create_dataset("lengths", data=enc.lengths)
        f.create_dataset("source_line", data=np.array([s.line for s in sentences], np.int64))
        for k, v in attrs.items():
            f.attrs[k] = v


def prepare_split(src_path, out_path, tokenizer: WordPieceTokenizer | str | os.PathLike,
                  labels: Sequence[str], max_len: int, label_all_subtokens: bool = False,
                  *, strip_prefix: bool = True) -> Path:
    """Tokenize one CoNLL split into ``out_path`` (HDF5) unless an up-to-date file is
    there already. ``tokenizer`` is a `WordPieceTokenizer` or a model directory.
    Returns ``out_path``. Raises `DataError` for bad data, including tags not in
    ``labels``."""
    src_path, out_path = Path(src_path), Path(out_path)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    if not src_path.is_file():
        raise DataError(f"{src_path}:1: file not found; check the data path in the job file")
    if max_len < 3:
        raise UsageError(f"max_len={max_len} is too small; it counts [CLS] and [SEP], use at least 3")
    if len(set(labels)) != len(labels) or "O" not in labels:
        raise UsageError(f"labels {list(labels)} must be distinct and include 'O'; fix the job file's labels")
    attrs = _wanted_attrs(file_sha256(src_path), tokenizer, labels, max_len,
                          label_all_subtokens, strip_prefix)
    if _is_current(out_path, attrs):
        return out_path

    sentences = read_conll(src_path, strip_prefix=strip_prefix)
    check_tags(sentences, labels, src_path)
    index = {t: i for i, t in enumerate(labels)}
    encoded = tokenizer.encode([s.tokens for s in sentences],
                               [[index[t] for t in s.tags] for s in sentences],
                               max_len, label_all_subtokens, _continuation(labels))
    attrs.update(pad_id=tokenizer.pad_id, source_path=str(src_path), n_sentences=len(sentences),
                 n_truncated=int(encoded.truncated.sum()))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        _write(tmp, encoded, sentences, attrs, len(labels))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def find_split(data_dir, split: str) -> Path | None:
    """``data_dir/split`` with one of the usual suffixes (none, .txt, .conll, ...)."""
    for suffix in _SUFFIXES:
        p = Path(data_dir) / f"{split}{suffix}"
        if p.is_file():
            return p
    return None


def prepare_all(data, out_dir, tokenizer_dir, max_len: int, *, label_all_subtokens: bool = False,
                labels: Sequence[str] | None = None, strip_prefix: bool = True,
                splits: Sequence[str] = SPLITS) -> dict[str, Path]:
    """Prepare every split into ``out_dir/<split>.h5``.

    ``data`` is a directory holding files named after the splits (``train``,
    ``dev``, ``test``, optionally with a suffix like ``.txt``) or a mapping
    split -> file. Splits missing from a directory are skipped; ``train`` is
    required unless ``labels`` (the tag set) is given. Returns split -> path.
    """
    if isinstance(data, Mapping):
        sources = {k: Path(v) for k, v in data.items() if k in splits}
        missing = [k for k in data if k not in splits]
        if missing:
            raise UsageError(f"unknown split(s) {', '.join(missing)}; use {', '.join(splits)}")
    else:
        if not Path(data).is_dir():
            raise UsageError(f"{data}: data directory not found; point the job's data path at "
                             f"a directory with {'/'.join(splits)} CoNLL files")
        sources = {s: p for s in splits if (p := find_split(data, s)) is not None}
    if labels is None:
        if "train" not in sources:
            raise UsageError(f"{data}: no train split to take the tag set from; "
                             "add a train file or list the labels in the job file")
        labels = collect_labels(read_conll(sources["train"], strip_prefix=strip_prefix))
    tokenizer = load_tokenizer(tokenizer_dir)
    return {split: prepare_split(src, Path(out_dir) / f"{split}.h5", tokenizer, labels, max_len,
                                 label_all_subtokens, strip_prefix=strip_prefix)
            for split, src in sources.items()}
