"""Views of a dataset (anything with `__len__` and `batch(indices)`)."""
from __future__ import annotations


class FirstN:
    """The first `n` samples of `dataset` (all of them when n is 0 or larger)."""

    def __init__(self, dataset, n: int = 0):
        self.dataset = dataset
        self.size = min(len(dataset), n) if n else len(dataset)

    def __len__(self) -> int:
        return self.size

    def batch(self, indices):
        return self.dataset.batch(indices)
