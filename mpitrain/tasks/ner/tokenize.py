"""WordPiece tokenization of pre-split words, with word-level NER labels.

`load_tokenizer(model_dir)` reads a model directory the way BERT checkpoints ship
it: ``tokenizer.json`` when present, else ``vocab.txt`` (BERT normalizer and
pre-tokenizer). Lowercasing follows ``do_lower_case`` in ``tokenizer_config.json``
when that file says so, otherwise the tokenizer's own normalizer (or lowercase for
a bare ``vocab.txt``, as BERT's tokenizer does).

Each sentence becomes ``[CLS] pieces... [SEP]``, at most ``max_len`` ids. Labels:
the first piece of every word carries the word's tag id; later pieces carry -100
(ignored by the loss) unless ``label_all_subtokens``, in which case they carry the
word's tag with ``B-`` turned into ``I-`` (when the tag set has it). A word that
the normalizer erases completely (control or zero-width characters) becomes
``[UNK]`` so every word keeps a labelled position. Sentences longer than
``max_len`` lose their last pieces; [CLS] and [SEP] are always kept.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from mpitrain.errors import UsageError

IGNORE = -100
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def exclusive_cumsum(x: np.ndarray) -> np.ndarray:
    """int64 offsets: ``[0, x0, x0 + x1, ...]`` with ``len(x)`` entries."""
    out = np.zeros(len(x), np.int64)
    np.cumsum(x[:-1], out=out[1:])
    return out


@dataclass
class EncodedSplit:
    """Tokenized sentences back to back (no padding). Sentence ``i`` occupies
    ``[offsets[i], offsets[i] + lengths[i])`` of the flat arrays."""

    token_ids: np.ndarray    # int32 [total]
    labels: np.ndarray       # int32 [total], IGNORE where not labelled
    word_starts: np.ndarray  # uint8 [total], 1 at the first piece of each word
    lengths: np.ndarray      # int32 [sentences], each <= max_len
    truncated: np.ndarray    # bool [sentences], pieces were cut off

    @property
    def offsets(self) -> np.ndarray:
        return exclusive_cumsum(self.lengths)

    def sentence(self, i: int) -> tuple[list[int], list[int], list[int]]:
        """(ids, labels, word_starts) of sentence ``i`` as lists."""
        o, n = int(self.offsets[i]), int(self.lengths[i])
        return (self.token_ids[o:o + n].tolist(), self.labels[o:o + n].tolist(),
                self.word_starts[o:o + n].tolist())


class WordPieceTokenizer:
    """A `tokenizers.Tokenizer` with BERT's special ids and a content checksum."""

    def __init__(self, tokenizer: Tokenizer, sha256: str, source: str):
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.sha256 = sha256
        self.source = source
        ids = {t: tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise UsageError(f"{source}:1: vocabulary lacks {', '.join(missing)}; "
                             f"use a BERT WordPiece vocabulary with {', '.join(SPECIAL_TOKENS)}")
        self.pad_id, self.unk_id = ids["[PAD]"], ids["[UNK]"]
        self.cls_id, self.sep_id = ids["[CLS]"], ids["[SEP]"]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def _pieces(self, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """(piece ids, global word index of each piece), grouped by word in order;
        a word the normalizer erases entirely gets one [UNK] piece."""
        encodings = self.tokenizer.encode_batch([list(s) for s in sentences],
                                                is_pretokenized=True, add_special_tokens=False)
        ids: list[int] = []
        word_ids: list[int] = []
        counts = np.empty(len(sentences), np.int64)
        for i, enc in enumerate(encodings):
            piece_ids = enc.ids
            ids.extend(piece_ids)
            word_ids.extend(enc.word_ids)
            counts[i] = len(piece_ids)
        n_words = np.fromiter((len(s) for s in sentences), np.int64, len(sentences))
        word_offsets = exclusive_cumsum(n_words)
        word = np.asarray(word_ids, np.int64) + np.repeat(word_offsets, counts)
        pid = np.asarray(ids, np.int64)
        missing = np.flatnonzero(np.bincount(word, minlength=int(n_words.sum())) == 0)
        if missing.size:
            word = np.concatenate([word, missing])
            pid = np.concatenate([pid, np.full(missing.size, self.unk_id, np.int64)])
            order = np.argsort(word, kind="stable")
            word, pid = word[order], pid[order]
        return pid, word

    def word_pieces(self, sentences: Sequence[Sequence[str]]) -> list[list[list[int]]]:
        """For each sentence, the piece ids of each word (never empty: [UNK] instead)."""
        pid, word = self._pieces(sentences)
        groups: list[list[int]] = [[] for _ in range(sum(len(s) for s in sentences))]
        for p, w in zip(pid.tolist(), word.tolist()):
            groups[w].append(p)
        out, k = [], 0
        for s in sentences:
            out.append(groups[k:k + len(s)])
            k += len(s)
        return out

    def encode(self, sentences: Sequence[Sequence[str]], tag_ids: Sequence[Sequence[int]],
               max_len: int, label_all_subtokens: bool = False,
               continuation: Sequence[int] | None = None) -> EncodedSplit:
        """Tokenize word lists and attach word tag ids (see the module doc).

        ``continuation[t]`` is the label of the later pieces of a word tagged ``t``
        when ``label_all_subtokens`` (default: ``t`` itself)."""
        if max_len < 3:
            raise UsageError(f"max_len={max_len} is too small; it counts [CLS] and [SEP], use at least 3")
        n = len(sentences)
        tags = np.fromiter((t for row in tag_ids for t in row), np.int64)
        n_words = np.fromiter((len(s) for s in sentences), np.int64, n)
        if len(tag_ids) != n or len(tags) != n_words.sum():
            raise ValueError("sentences and tag_ids differ in number or length")
        pid, word = self._pieces(sentences)
        sent = np.repeat(np.arange(n), n_words)[word]
        per_sent = np.bincount(sent, minlength=n)
        sent_start = exclusive_cumsum(per_sent)
        pos = np.arange(len(pid)) - sent_start[sent]
        first = np.ones(len(pid), bool)
        first[1:] = word[1:] != word[:-1]
        keep = pos < max_len - 2

        piece_tag = tags[word]
        if label_all_subtokens:
            cont = np.asarray(continuation if continuation is not None else np.arange(tags.max(initial=0) + 1))
            labels = np.where(first, piece_tag, cont[piece_tag])
        else:
            labels = np.where(first, piece_tag, IGNORE)

        kept = np.minimum(per_sent, max_len - 2)
        lengths = (kept + 2).astype(np.int32)
        out_start = exclusive_cumsum(lengths)
        total = int(lengths.sum())
        out_ids = np.empty(total, np.int32)
        out_labels = np.full(total, IGNORE, np.int32)
        out_starts = np.zeros(total, np.uint8)
        out_ids[out_start] = self.cls_id
        out_ids[out_start + lengths - 1] = self.sep_id
        dest = out_start[sent[keep]] + 1 + pos[keep]
        out_ids[dest] = pid[keep]
        out_labels[dest] = labels[keep]
        out_starts[dest] = first[keep]
        return EncodedSplit(out_ids, out_labels, out_starts, lengths, per_sent > kept)


def _sha256(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


def _config_lowercase(model_dir: Path) -> bool | None:
    cfg = model_dir / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    try:
        value = json.loads(cfg.read_text(encoding="utf-8")).get("do_lower_case")
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{cfg}:1: not valid JSON ({e}); fix or remove the file") from None
    return None if value is None else bool(value)


def _from_vocab(vocab: Path, lowercase: bool) -> Tokenizer:
    tok = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token="[UNK]",
                                               max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def load_tokenizer(model_dir) -> WordPieceTokenizer:
    """Load the WordPiece tokenizer of a model directory (see the module doc)."""
    model_dir = Path(model_dir)
    lowercase = _config_lowercase(model_dir)
    tj, vocab = model_dir / "tokenizer.json", model_dir / "vocab.txt"
    if tj.is_file():
        raw = tj.read_bytes()
        try:
            tok = Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise UsageError(f"{tj}:1: cannot load tokenizer ({str(e).splitlines()[0]}); "
                             "fix the file or remove it to use vocab.txt") from None
        if lowercase is not None and isinstance(tok.normalizer, normalizers.BertNormalizer):
            tok.normalizer.lowercase = lowercase
        source = tj
    elif vocab.is_file():
        raw = vocab.read_bytes()
        lowercase = True if lowercase is None else lowercase
        tok = _from_vocab(vocab, lowercase)
        source = vocab
    else:
        raise UsageError(f"{model_dir}: no tokenizer.json or vocab.txt; "
                         "point the job's tokenizer/model directory at a BERT WordPiece model")
    return WordPieceTokenizer(tok, _sha256(raw, repr(lowercase).encode()), str(source))
