"""Column-parallel and row-parallel linear layers and a vocabulary-parallel
embedding (Megatron's pattern), each made from its dense version (`from_dense`:
the whole layer is initialised as one process would, then sliced) and holding
this rank's slice. Every parameter records its split (`param.tp_split`, a
`Split`, or None when it is replicated in the tensor group)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from .ops import copy_to_group, gather_last_dim, reduce_from_group
from .sharding import Split, mark


def shard_range(size: int, rank: int, parts: int) -> tuple[int, int]:
    if size % parts:
        raise UsageError(f"tensor parallelism: a dimension of {size} does not split into tp = {parts} equal "
                         f"parts; use a tp that divides {size}")
    per = size // parts
    return rank * per, (rank + 1) * per


def _sliced(t: torch.Tensor, split: Split | None) -> nn.Parameter:
    value = t.detach() if split is None else split.take(t.detach())
    return mark(nn.Parameter(value.clone().contiguous()), split)


def _group(comm) -> tuple[int, int]:
    return comm.Get_rank(), comm.Get_size()


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W's output rows split: this rank computes its slice of
    the outputs (gathered to all when `gather_output`). `chunks` > 1: the outputs
    are that many equal blocks (a fused q|k|v), each split on its own. `padded`:
    the outputs need not divide by tp (a vocabulary); padding outputs are -inf."""

    def __init__(self, weight, bias, comm, split: Split, gather_output: bool = False):
        super().__init__()
        self.comm, self.gather_output, self.split = comm, gather_output, split
        self.weight = _sliced(weight, split)
        self.bias = _sliced(bias, Split(0, split.size, split.parts, split.rank, split.chunks, split.padded)) \
            if bias is not None else None

    @classmethod
    def from_dense(cls, linear: nn.Linear, comm, gather_output: bool = False, chunks: int = 1,
                   padded: bool = False):
        rank, parts = _group(comm)
        split = Split(0, linear.out_features, parts, rank, chunks, padded)
        return cls(linear.weight, linear.bias, comm, split, gather_output)

    def forward(self, x):
        y = F.linear(copy_to_group(x, self.comm), self.weight, self.bias)
        s = self.split
        if s.padded and s.per * (s.rank + 1) > s.block:
            y = y.masked_fill(torch.arange(s.per, device=y.device) + s.rank * s.per >= s.block, float("-inf"))
        return gather_last_dim(y, self.comm) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """y = x W^T + b with W's input columns split: this rank takes its slice of
    the inputs (a column-parallel layer's output), the partial products are
    summed over the group, and the (replicated) bias is added after the sum."""

    def __init__(self, weight, bias, comm, split: Split):
        super().__init__()
        self.comm = comm
        self.weight = _sliced(weight, split)
        self.bias = _sliced(bias, None) if bias is not None else None

    @classmethod
    def from_dense(cls, linear: nn.Linear, comm):
        rank, parts = _group(comm)
        return cls(linear.weight, linear.bias, comm, Split(1, linear.in_features, parts, rank))

    def forward(self, x):
        y = reduce_from_group(F.linear(x, self.weight), self.comm)
        return y + self.bias if self.bias is not None else y


def padded_vocab(vocab: int, parts: int) -> int:
    """The vocabulary rounded up to a multiple of tp (padded rows are never looked up
    and their logits are masked out of the loss)."""
    return -(-vocab // parts) * parts


class VocabParallelEmbedding(nn.Module):
    """An embedding whose rows (the vocabulary, padded to a multiple of tp) are split:
    ids outside this rank's rows look up zeros, and the group sums the results.
    A `padding_idx` row gets no gradient, as in `nn.Embedding`."""

    def __init__(self, weight, comm, split: Split, padding_idx: int | None = None):
        super().__init__()
        self.comm, self.vocab, self.start = comm, split.size, split.rank * split.per
        self.weight = _sliced(weight, split)
        local_pad = None if padding_idx is None else padding_idx - self.start
        self.padding_idx = local_pad if local_pad is not None and 0 <= local_pad < split.per else None

    @property
    def num_embeddings(self) -> int:
        return self.vocab

    @classmethod
    def from_dense(cls, embedding: nn.Embedding, comm):
        rank, parts = _group(comm)
        split = Split(0, embedding.num_embeddings, parts, rank, padded=True)
        return cls(embedding.weight, comm, split, embedding.padding_idx)

    def forward(self, ids):
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight, padding_idx=self.padding_idx)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_group(out, self.comm)


def replicate(module: nn.Module) -> nn.Module:
    """Mark every parameter of `module` not yet marked as replicated in the tensor group."""
    for p in module.parameters():
        if not hasattr(p, "tp_split"):
            p.tp_split = None
    return module
