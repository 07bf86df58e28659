"""Streaming reader for CoNLL-style NER column files.

Format (CoNLL-2003, WikiANN and similar):

* one token per line: the token in the first column, the tag in the last column,
  columns separated by spaces and/or tabs (middle columns such as POS or chunk
  tags are ignored);
* a blank (or whitespace-only) line ends a sentence; blank lines at the start or
  end of the file and runs of blank lines are fine;
* lines whose first column is ``-DOCSTART-`` are document markers: skipped, and
  they end the current sentence;
* tags are ``O`` or ``<P>-<TYPE>`` with P one of B, I, E, S, L, U (IOB1/IOB2/IOBES);
* UTF-8, LF or CRLF line ends;
* invisible characters are ignored wherever they are (byte-order marks, also in
  the middle of a file made by joining files, and zero-width spaces and
  joiners: ``mpitrain.tasks.INVISIBLE``): they are removed from every column, a
  line of nothing else is a blank line, and a line whose token is nothing else
  is skipped (there is no word to label).

Language prefixes: WikiANN writes every token as ``en:Token``. A file is taken to
carry such prefixes when its *first* token starts with two or three lowercase
ASCII letters and a colon followed by more text (an ISO 639 code, ``^[a-z]{2,3}:``).
That exact prefix is then removed from every token of the file that carries it,
once: ``en:bar:7`` becomes ``bar:7``. In a file whose first token has no such
prefix nothing is removed, so a token like ``re:`` in ordinary text survives.

Every problem is a `DataError` whose one-line message names the file and line,
says what is wrong and how to fix it.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mpitrain.errors import DataError
from mpitrain.tasks import drop_invisible

DOCSTART = "-DOCSTART-"
_LANG_PREFIX = re.compile(r"^[a-z]{2,3}:(?=.)")
_TAG = re.compile(r"^(O|[BIESLU]-\S+)$")
_SEP = re.compile(r"[ \t\f\v\r\n]+")   # ASCII whitespace only: a no-break space stays inside a token


@dataclass(frozen=True)
class Sentence:
    """One sentence, from source line ``line`` on. Its lines are contiguous but for
    `skipped` ones (a token of invisible characters only): see `source_line`."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    line: int
    skipped: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.tokens)

    def source_line(self, i: int) -> int:
        """The line token ``i`` was read from."""
        line = self.line + i
        for gap in self.skipped:
            line += gap <= line
        return line


def data_error(path, line: int, what: str, fix: str) -> DataError:
    """A one-line `DataError`: ``path:line: what; fix``."""
    return DataError(f"{path}:{line}: {what}; {fix}")


def _bad_utf8(path) -> DataError:
    """The error for the first line of ``path`` that is not valid UTF-8."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return data_error(path, lineno,
                                  f"byte 0x{raw[e.start:e.start + 1].hex()} at column {e.start + 1} "
                                  "is not valid UTF-8",
                                  "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)")
    return data_error(path, 1, "not valid UTF-8", "re-encode the file as UTF-8")


def _columns(text: str) -> list[str]:
    if text.isascii():
        return text.split()
    stripped = text.strip(" \t\f\v\r\n")
    return _SEP.split(stripped) if stripped else []


def iter_conll(path, *, strip_prefix: bool = True) -> Iterator[Sentence]:
    """Yield the sentences of a CoNLL file one at a time (see the module doc).

    Raises `DataError` for a missing file, bad UTF-8, a line with one column, an
    empty token, a malformed tag, or a file without any sentence.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}:1: file not found; check the data path in the job file") from None
    except OSError as e:
        raise DataError(f"{path}:1: cannot open ({e.strerror}); check the path and its permissions") from None

    prefix: str | None = None if strip_prefix else ""
    tokens: list[str] = []
    tags: list[str] = []
    skipped: list[int] = []
    start = 0
    count = 0
    lineno = 0
    valid_tags: set[str] = set()
    lines = io.TextIOWrapper(f, encoding="utf-8-sig", errors="strict", newline="\n")
    try:
        for lineno, text in enumerate(lines, 1):
            cols = _columns(text)
            invisible = token_gone = False  # the token column held invisible characters / nothing else
            if not text.isascii():  # invisible characters are never ASCII
                visible = [drop_invisible(c) for c in cols]
                invisible = bool(cols) and visible[0] != cols[0]
                token_gone = invisible and not visible[0]
                cols = [c for c in visible if c]
            if not cols or cols[0] == DOCSTART:
                if tokens:
                    yield Sentence(tuple(tokens), tuple(tags), start, tuple(skipped))
                    count += 1
                    tokens, tags, skipped = [], [], []
                continue
            if text[0] in " \t\f\v":
                shown = text.rstrip("\r\n")
                raise data_error(path, lineno, f"empty token (line starts with whitespace: {shown!r})",
                                 "put the token in the first column, or make the line empty to end the sentence")
            if token_gone:  # no word to label
                if tokens:
                    skipped.append(lineno)
                continue
            if len(cols) == 1:
                raise data_error(path, lineno, f"one column ({cols[0]!r}), expected 'TOKEN ... TAG'",
                                 "add the tag after the token, or leave the line empty between sentences")
            token, tag = cols[0], cols[-1]
            if prefix is None:
                m = _LANG_PREFIX.match(token)
                prefix = m.group(0) if m else ""
            if prefix and token.startswith(prefix):
                token = token[len(prefix):]
                if not token and invisible:  # the prefix, then invisible characters only
                    if tokens:
                        skipped.append(lineno)
                    continue
                if not token:
                    raise data_error(path, lineno, f"empty token after the language prefix {prefix!r}",
                                     f"write the token after {prefix!r}")
            if tag not in valid_tags:
                if not _TAG.match(tag):
                    raise data_error(path, lineno, f"tag {tag!r} is not 'O' or B-/I-<TYPE>",
                                     "put the NER tag in the last column (IOB2, e.g. B-PER, I-PER, O)")
                valid_tags.add(tag)
            if not tokens:
                start = lineno
            tokens.append(token)
            tags.append(tag)
        if tokens:
            yield Sentence(tuple(tokens), tuple(tags), start, tuple(skipped))
            count += 1
    except UnicodeDecodeError:
        raise _bad_utf8(path) from None
    finally:
        lines.close()
    if count == 0:
        raise data_error(path, max(lineno, 1), f"no sentences in {lineno} line(s) (empty split)",
                         "point the job file at a non-empty CoNLL file, or drop this split")


def read_conll(path, *, strip_prefix: bool = True) -> list[Sentence]:
    """All sentences of a CoNLL file; see `iter_conll`."""
    return list(iter_conll(path, strip_prefix=strip_prefix))
