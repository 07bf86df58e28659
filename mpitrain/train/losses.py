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
