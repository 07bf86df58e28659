"""Column-parallel and row-parallel linear layers and a vocabulary-parallel
embedding, each made from its dense version (`from_dense`) and holding this
rank's slice. Every parameter records its split: `param.tp_split` is the split
dimension of the logical tensor, or None when it is replicated in the group."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from .ops import copy_to_group, gather_last_dim, reduce_from_group


def shard_range(size: int, rank: int, parts: int) -> tuple[int, int]:
    if size % parts:
        raise UsageError(f"tensor parallelism: a dimension of {size} does not split into tp = {parts} equal "
                         f"parts; use a tp that divides {size}")
    per = size // parts
    return rank * per, (rank + 1) * per


def _param(t: torch.Tensor, split) -> nn.Parameter:
    p = nn.Parameter(t.detach().clone().contiguous())
    p.tp_split = split
    return p


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W's output rows split: this rank computes its slice of
    the outputs (gathered to all when `gather_output`)."""

    def __init__(self, weight, bias, comm, gather_output: bool = False):
        super().__init__()
        self.comm, self.gather_output = comm, gather_output
        self.weight = _param(weight, 0)
        self.bias = _param(bias, 0) if bias is not None else None

    @classmethod
    def from_dense(cls, linear: nn.Linear, comm, gather_output: bool = False):
        a, b = shard_range(linear.out_features, comm.Get_rank(), comm.Get_size())
        return cls(linear.weight[a:b], linear.bias[a:b] if linear.bias is not None else None, comm, gather_output)

    def forward(self, x):
        y = F.linear(copy_to_group(x, self.comm), self.weight, self.bias)
        return gather_last_dim(y, self.comm) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """y = x W^T + b with W's input columns split: this rank takes its slice of
    the inputs (a column-parallel layer's output), the partial products are
    summed over the group, and the (replicated) bias is added after the sum."""

    def __init__(self, weight, bias, comm):
        super().__init__()
        self.comm = comm
        self.weight = _param(weight, 1)
        self.bias = _param(bias, None) if bias is not None else None

    @classmethod
    def from_dense(cls, linear: nn.Linear, comm):
        a, b = shard_range(linear.in_features, comm.Get_rank(), comm.Get_size())
        return cls(linear.weight[:, a:b], linear.bias, comm)

    def forward(self, x):
        y = reduce_from_group(F.linear(x, self.weight), self.comm)
        return y + self.bias if self.bias is not None else y


def padded_vocab(vocab: int, parts: int) -> int:
    """The vocabulary rounded up to a multiple of tp (padded rows are never looked up
    and their logits are masked out of the loss)."""
    return -(-vocab // parts) * parts


class VocabParallelEmbedding(nn.Module):
    """An embedding whose rows (the vocabulary, padded to a multiple of tp) are split:
    ids outside this rank's rows look up zeros, and the group sums the results."""

    def __init__(self, weight, vocab: int, start: int, comm):
        super().__init__()
        self.comm, self.vocab, self.start = comm, vocab, start
        self.weight = _param(weight, 0)

    @classmethod
    def from_dense(cls, embedding: nn.Embedding, comm):
        vocab, dim = embedding.weight.shape
        per = padded_vocab(vocab, comm.Get_size()) // comm.Get_size()
        start = comm.Get_rank() * per
        rows = torch.zeros(per, dim, dtype=embedding.weight.dtype)
        real = embedding.weight[start:min(start + per, vocab)]
        rows[:len(real)] = real
        return cls(rows, vocab, start, comm)

    def forward(self, ids):
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_group(out, self.comm)


