"""Lazy reader of a prepared NER split (see `mpitrain.tasks.ner.prepare` for the layout).

Only the per-sentence index (offsets, lengths: a few bytes per sentence) is held
in memory; token ids and labels are read from disk for the sentences a batch
asks for. Each batch is padded to its own longest sentence.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mpitrain.data.lazy_h5 import LazyH5
from mpitrain.errors import DataError
from mpitrain.tasks.ner.prepare import FORMAT_VERSION
from mpitrain.tasks.ner.tokenize import IGNORE


class NerH5Dataset(LazyH5):
    """Sentences of one prepared split. ``batch(indices)`` gives padded tensors;
    an index of -1 is a padding slot and gives an all-masked row."""

    def __init__(self, path):
        self.path = Path(path)
        f = self._open()
        version = f.attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(f"{self.path}:1: prepared-data format {version}, expected {FORMAT_VERSION}; "
                            "run `python -m mpitrain prepare` again")
        self.labels: list[str] = json.loads(f.attrs["labels"])
        self.pad_id = int(f.attrs["pad_id"])
        self.max_len = int(f.attrs["max_len"])
        self.label_all_subtokens = bool(f.attrs["label_all_subtokens"])
        self.offsets = f["offsets"][...]
        self.lengths = f["lengths"][...]

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def id2label(self) -> list[str]:
        return self.labels

    def _rows(self, name: str, idx: np.ndarray) -> list[np.ndarray]:
        """Rows of a flat dataset for valid (>= 0) indices, read in one pass over
        the span they cover when that span is small, else one slice each."""
        data = self._open()[name]
        valid = idx[idx >= 0]
        if len(valid) == 0:
            return []
        starts, lens = self.offsets[valid], self.lengths[valid]
        lo, hi = int(starts.min()), int((starts + lens).max())
        if hi - lo <= 4 * int(lens.sum()) + 4096:
            span = data[lo:hi]
            return [span[s - lo:s - lo + n] for s, n in zip(starts, lens)]
        return [data[s:s + n] for s, n in zip(starts, lens)]

    def _check(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = idx[(idx < -1) | (idx >= len(self))]
        if len(bad):
            raise IndexError(f"sentence index {int(bad[0])} out of range for {len(self)} "
                             f"sentences in {self.path} (-1 means a padding slot)")
        return idx

    def _pad(self, name: str, idx: np.ndarray, fill: int) -> torch.Tensor:
        rows = iter(self._rows(name, idx))
        width = max(1, int(self.lengths[idx[idx >= 0]].max(initial=0)))
        out = np.full((len(idx), width), fill, np.int64)
        for r, i in enumerate(idx):
            if i >= 0:
                row = next(rows)
                out[r, :len(row)] = row
        return torch.from_numpy(out)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask, labels)``, LongTensors ``[b, L]`` with L the
        longest requested sentence (at least 1). Padding positions: input id = [PAD],
        mask 0, label -100. Index -1 gives a row that is all padding."""
        idx = self._check(indices)
        input_ids = self._pad("token_ids", idx, self.pad_id)
        labels = self._pad("labels", idx, IGNORE)
        lengths = torch.from_numpy(np.where(idx >= 0, self.lengths[np.maximum(idx, 0)], 0).astype(np.int64))
        mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        return input_ids, mask, labels

    def first_subtoken_mask(self, indices: Sequence[int]) -> torch.Tensor:
        """BoolTensor ``[b, L]`` (same L as `batch`): True at the first piece of each
        word. Needed to score word-level tags when all sub-tokens are labelled."""
        idx = self._check(indices)
        return self._pad("word_starts", idx, 0).bool()

    def source_lines(self, indices: Sequence[int]) -> list[int]:
        """Source-file line of each sentence's first token (-1 for padding slots)."""
        idx = self._check(indices)
        lines = self._open()["source_line"]
        return [int(lines[i]) if i >= 0 else -1 for i in idx]
