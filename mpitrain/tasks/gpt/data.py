"""Text -> byte-level BPE -> fixed-length token blocks in HDF5 -> lazy batches.

File layout of ``<split>.h5`` (format version `FORMAT_VERSION`):

* ``blocks``  uint16 (int32 if the vocabulary has more than 65536 tokens) [N, block_size + 1].
  The split's documents are tokenized and joined with ``<|endoftext|>`` between
  them into one stream; block ``i`` is ``stream[i*B : i*B + B + 1]`` (B = block_size),
  so consecutive blocks overlap by one token, inputs are ``block[:-1]`` and
  targets ``block[1:]``. The tail that cannot fill a block is dropped.
* attrs: ``format_version``, ``block_size``, ``vocab_size`` (of the tokenizer),
  ``eos_id``, ``inputs_sha256`` (all documents of all splits, block_size, the
  requested vocab_size and the given tokenizer file), ``tokenizer_sha256``,
  ``split``, ``n_documents``, ``n_tokens`` (stream length).

Files whose attrs match the current inputs are reused untouched; otherwise they
are written to a temporary file in the same directory and moved into place
with `os.replace`, so a crash never leaves a half file behind.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np

from mpitrain.data.lazy_h5 import LazyH5
from mpitrain.errors import DataError, UsageError

FORMAT_VERSION = 1
SPLITS = ("train", "dev", "test")
EOS = "<|endoftext|>"
IGNORE = -100        # target of a padding slot; the loss's ignore_index
_MIN_VOCAB = 257     # 256 byte tokens + <|endoftext|>


def file_sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` a temporary file next to ``path``, then move it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def train_tokenizer(docs: Sequence[str], vocab_size: int, out_path) -> Path:
    """Train a byte-level BPE tokenizer (GPT-2 style; ``<|endoftext|>`` is id 0, then
    the 256 byte symbols, then merges) on ``docs`` and save it as JSON at
    ``out_path``. The same documents and vocab_size give the same file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < _MIN_VOCAB:
        raise UsageError(f"vocab_size={vocab_size} is too small for byte-level BPE; "
                         f"use at least {_MIN_VOCAB} (256 bytes + {EOS})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(out_path, lambda tmp: tok.save(str(tmp), pretty=True))
    return out_path


def load_tokenizer(path):
    """A `tokenizers.Tokenizer` from a tokenizer.json holding ``<|endoftext|>``."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:   # the library raises plain Exception for unreadable files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot load tokenizer ({msg}); give a tokenizer.json saved by "
                        "the `tokenizers` library, or leave the tokenizer out to train one") from None
    if tok.token_to_id(EOS) is None:
        raise DataError(f"{path}: tokenizer has no {EOS} token; add it as a special token "
                        "or leave the tokenizer out to train one")
    return tok


def _inputs_sha(splits: Mapping[str, Sequence[str]], block_size: int, vocab_size: int,
                tokenizer_sha: str | None) -> str:
    h = hashlib.sha256(f"lm-blocks v{FORMAT_VERSION} B={block_size} V={vocab_size} "
                       f"tok={tokenizer_sha or 'trained'}".encode())
    for split in sorted(splits):
        docs = splits[split]
        h.update(f"\0split {split} {len(docs)}\0".encode())
        for doc in docs:
            raw = doc.encode("utf-8", "surrogatepass")
            h.update(len(raw).to_bytes(8, "little"))
            h.update(raw)
    return h.hexdigest()


def _is_current(path: Path, wanted: dict) -> bool:
    try:
        with h5py.File(path, "r") as f:
            have = {k: f.attrs.get(k) for k in wanted}
            return "blocks" in f and all(isinstance(have[k], (str, int, np.integer)) and have[k] == v
                                         for k, v in wanted.items())
    except (OSError, KeyError):
        return False


def _token_stream(tok, docs: Sequence[str], eos_id: int, chunk: int = 256) -> np.ndarray:
    parts: list[np.ndarray] = []
    for start in range(0, len(docs), chunk):
        for enc in tok.encode_batch(list(docs[start:start + chunk]), add_special_tokens=False):
            parts += [np.array([eos_id], np.int64), np.asarray(enc.ids, np.int64)]
    return np.concatenate(parts[1:])


def _pack(stream: np.ndarray, block_size: int, dtype) -> np.ndarray:
    n = (len(stream) - 1) // block_size
    blocks = np.empty((n, block_size + 1), dtype)
    blocks[:, :block_size] = stream[:n * block_size].reshape(n, block_size)
    blocks[:, block_size] = stream[block_size:n * block_size + 1:block_size]
    return blocks


def _write_h5(tmp: Path, blocks: np.ndarray, attrs: dict) -> None:
    with h5py.File(tmp, "w") as f:
        f.create_dataset("blocks", data=blocks)
        f.attrs.update(attrs)


def prepare_lm(splits: Mapping[str, Sequence[str]], out_dir, *, block_size: int, vocab_size: int,
               tokenizer_file=None) -> dict:
    """Tokenize the splits into ``out_dir/<split>.h5`` (see the module doc), reusing
    files that are up to date. The tokenizer is trained on the train split only
    (or ``tokenizer_file`` is used) and kept as ``out_dir/tokenizer.json``.

    Returns ``{"paths": {split: str}, "tokenizer": str, "vocab_size": int,
    "eos_id": int, "tokens": {split: stream length}}``."""
    for split, docs in splits.items():
        if split not in SPLITS or isinstance(docs, str) or not docs:
            raise UsageError(f"split {split!r}: need a name in {'/'.join(SPLITS)} and a non-empty list "
                             "of documents (strings); rename the split, or give it text or leave it out")
    if block_size < 1:
        raise UsageError(f"block_size={block_size} must be at least 1; e.g. 128")
    if tokenizer_file is None and "train" not in splits:
        raise UsageError("no train split to train the tokenizer on; add a train split or give a tokenizer file")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_path = out_dir / "tokenizer.json"
    tok_sha = file_sha256(tok_path) if tok_path.is_file() else None
    if tokenizer_file is not None and not Path(tokenizer_file).is_file():
        raise DataError(f"{tokenizer_file}: tokenizer file not found; check the path or leave it out to train one")
    given_sha = None if tokenizer_file is None else file_sha256(tokenizer_file)
    inputs_sha = _inputs_sha(splits, block_size, vocab_size, given_sha)
    paths = {s: out_dir / f"{s}.h5" for s in splits}
    wanted = lambda: {"format_version": FORMAT_VERSION, "inputs_sha256": inputs_sha,  # noqa: E731
                      "tokenizer_sha256": tok_sha}

    if given_sha is not None:
        if tok_sha != given_sha:
            _atomic(tok_path, lambda tmp: shutil.copyfile(tokenizer_file, tmp))
            tok_sha = given_sha
    elif tok_sha is None or not all(_is_current(p, wanted()) for p in paths.values()):
        train_tokenizer(splits["train"], vocab_size, tok_path)
        tok_sha = file_sha256(tok_path)

    tok = load_tokenizer(tok_path)
    actual_vocab, eos_id = tok.get_vocab_size(), tok.token_to_id(EOS)
    if given_sha is not None and actual_vocab > vocab_size:
        raise UsageError(f"{tokenizer_file}: tokenizer has {actual_vocab} tokens, more than "
                         f"vocab_size={vocab_size}; raise vocab_size to at least {actual_vocab}")
    dtype = np.uint16 if actual_vocab <= 1 << 16 else np.int32
    tokens: dict[str, int] = {}
    for split, docs in splits.items():
        path = paths[split]
        if _is_current(path, wanted()):
            with h5py.File(path, "r") as f:
                tokens[split] = int(f.attrs["n_tokens"])
            continue
        stream = _token_stream(tok, docs, eos_id)
        if len(stream) < block_size + 1:
            raise DataError(f"split {split!r}: {len(stream)} tokens in {len(docs)} document(s), too few "
                            f"for one block of block_size + 1 = {block_size + 1} tokens; "
                            "lower block_size or add text")
        attrs = dict(wanted(), block_size=block_size, vocab_size=actual_vocab, eos_id=eos_id,
                     split=split, n_documents=len(docs), n_tokens=len(stream))
        _atomic(path, lambda tmp: _write_h5(tmp, _pack(stream, block_size, dtype), attrs))
        tokens[split] = len(stream)
    return {"paths": {s: str(p) for s, p in paths.items()}, "tokenizer": str(tok_path),
            "vocab_size": actual_vocab, "eos_id": eos_id, "tokens": tokens}


class LMBlocks(LazyH5):
    """The blocks of one prepared split. The HDF5 file is opened on first read (again
    in each process, so the object can be pickled to MPI ranks or workers).

    ``batch(indices) -> ((inputs,), targets, count)``: LongTensors ``[n, block_size]``,
    targets are inputs shifted by one, count = target tokens. An index of -1 is
    a padding slot: inputs ``<|endoftext|>``, targets -100 (ignored), not counted."""

    def __init__(self, path):
        self.path = Path(path)
        with self._open(keep=False) as f:
            version, shape = f.attrs.get("format_version"), f["blocks"].shape if "blocks" in f else None
            if version != FORMAT_VERSION or shape is None or shape[1] != f.attrs["block_size"] + 1:
                raise DataError(f"{self.path}: prepared-data format {version}, expected {FORMAT_VERSION}; "
                                "delete the file or run the prepare step again")
            self._len, self._block_size = int(shape[0]), int(f.attrs["block_size"])
            self._vocab_size, self.eos_id = int(f.attrs["vocab_size"]), int(f.attrs["eos_id"])
            self.n_tokens = int(f.attrs["n_tokens"])

    block_size = property(lambda self: self._block_size, doc="tokens per input row")
    vocab_size = property(lambda self: self._vocab_size, doc="size of the tokenizer's vocabulary")

    def __len__(self) -> int:
        return self._len

    def batch(self, indices):
        import torch

        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = idx[(idx < -1) | (idx >= self._len)]
        if len(bad):
            raise IndexError(f"block index {int(bad[0])} out of range for {self._len} blocks "
                             f"in {self.path} (-1 means a padding slot)")
        rows = np.full((len(idx), self._block_size + 1), self.eos_id, np.int64)
        valid = idx >= 0
        if valid.any():   # h5py wants increasing, distinct indices: read sorted, then restore order
            uniq, inverse = np.unique(idx[valid], return_inverse=True)
            data = self._open()["blocks"]
            lo, hi = int(uniq[0]), int(uniq[-1]) + 1
            got = data[lo:hi][uniq - lo] if hi - lo <= 2 * len(uniq) + 16 else data[uniq]
            rows[valid] = got[inverse.reshape(-1)]
        targets = rows[:, 1:].copy()
        targets[~valid] = IGNORE
        inputs = torch.from_numpy(np.ascontiguousarray(rows[:, :-1]))
        return (inputs,), torch.from_numpy(targets), int(valid.sum()) * self._block_size
