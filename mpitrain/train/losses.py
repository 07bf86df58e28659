"""Losses in the pipeline engine's contract: `count(targets)` loss terms per
micro-batch and `__call__(outputs, targets)` their SUM, so that dividing by the
global count gives exactly the mean over one big batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class TokenCrossEntropy:
    """Cross-entropy over tokens whose label is not IGNORE_INDEX (padding, non-first sub-tokens)."""

    def count(self, targets: torch.Tensor) -> int:
        return int((targets != IGNORE_INDEX).sum())

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")


class VocabParallelCrossEntropy(TokenCrossEntropy):
    """`TokenCrossEntropy` for logits that may be split by vocabulary over the tensor
    group (a vocabulary-parallel output layer): with tp > 1 the full logits are never
    built on one rank, and columns past `vocab` (padding to a multiple of tp) are
    left out. The engine calls `bind` with the rank's build context."""

    def __init__(self, vocab: int):
        self.vocab, self.comm = vocab, None

    def bind(self, ctx) -> "VocabParallelCrossEntropy":
        self.comm = ctx.tp_comm if ctx.tp_size > 1 else None
        return self

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.comm is None:
            return super().__call__(logits[..., :self.vocab], targets)
        from ..tp.cross_entropy import vocab_parallel_cross_entropy

        return vocab_parallel_cross_entropy(logits, targets, self.comm, self.vocab).sum()
