"""Where the language-model text comes from: a built-in corpus, or UTF-8 text files.

A corpus is a list of documents (strings). `split_documents` divides it into
train/dev/test deterministically; `mpitrain.tasks.gpt.data.prepare_lm` turns the
splits into token blocks.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable, Sequence

from mpitrain.errors import DataError, UsageError
from mpitrain.tasks import drop_invisible

BUILTIN = ("pydoc",)


def builtin_corpus(name: str = "pydoc") -> list[str]:
    """A corpus that ships with Python. ``"pydoc"``: the topics of Python's own help
    text (`pydoc_data.topics`, ~465k characters of English prose), one document
    per topic, in sorted topic order."""
    if name != "pydoc":
        raise UsageError(f"unknown built-in corpus {name!r}; use one of: {', '.join(BUILTIN)}, "
                         "or give a directory of .txt files")
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise UsageError("built-in corpus 'pydoc': this Python has no pydoc_data module; "
                         "install the full standard library or give a directory of .txt files") from None
    return [topics[k] for k in sorted(topics)]


def _read_utf8(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the text path") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path and its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: byte 0x{raw[e.start:e.start + 1].hex()} at byte offset {e.start} "
                        "is not valid UTF-8; save the file as UTF-8 "
                        "(e.g. `iconv -f latin1 -t utf-8`)") from None
    return drop_invisible(text).replace("\r\n", "\n")


def text_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """The files `read_text_files` would read: a directory gives its ``*.txt`` files
    (sorted by name), a file gives itself."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise UsageError("no text files given; name a directory of .txt files or the files themselves")
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.glob("*.txt") if p.is_file())
            if not found:
                raise DataError(f"{item}: directory has no *.txt files; put the text in .txt files "
                                "there or name the files themselves")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: file not found; check the text path")
    return files


def read_text_files(paths: str | Path | Iterable[str | Path]) -> list[str]:
    """Each file one document, strict UTF-8; CRLF becomes LF, and byte-order marks
    and zero-width characters (`mpitrain.tasks.INVISIBLE`) are removed wherever
    they are, so a line of nothing else is a blank line. ``paths``: a directory
    (all ``*.txt`` in it, sorted), a file, or a list of either."""
    return [_read_utf8(p) for p in text_files(paths)]


def split_documents(docs: Sequence[str], dev_fraction: float = 0.1, test_fraction: float = 0.1,
                    seed: int = 0) -> dict[str, list[str]]:
    """Deterministically assign documents to train/dev/test.

    A split with a positive fraction gets ``max(1, round(fraction * n))`` documents;
    a fraction of 0 leaves that split out. The documents of each split keep their
    corpus order. Raises `UsageError` if train would be empty."""
    for name, f in (("dev_fraction", dev_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise UsageError(f"{name}={f} must be in [0, 1); e.g. 0.1")
    if dev_fraction + test_fraction >= 1:
        raise UsageError(f"dev_fraction + test_fraction = {dev_fraction + test_fraction} leaves no "
                         "training text; make their sum less than 1")
    n = len(docs)
    n_dev = max(1, round(dev_fraction * n)) if dev_fraction > 0 else 0
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    if n - n_dev - n_test < 1:
        raise UsageError(f"{n} document(s) are too few to split into train ({n - n_dev - n_test}), "
                         f"dev ({n_dev}) and test ({n_test}); add documents (e.g. more .txt files) "
                         "or set the dev/test fractions to 0")
    order = list(range(n))
    random.Random(int(seed)).shuffle(order)
    parts = {"dev": order[:n_dev], "test": order[n_dev:n_dev + n_test], "train": order[n_dev + n_test:]}
    return {split: [docs[i] for i in sorted(parts[split])]
            for split in ("train", "dev", "test") if parts[split]}
