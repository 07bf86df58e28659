"""How a logical tensor is split over a tensor-parallel group, as plain data.

A parameter split over the tensor group carries a `Split` (``param.tp_split``);
a replicated one carries None. Everything that treats parameters as a whole --
clipping, gathering state, checkpoints, `plan` -- goes through this, so the
logical tensor (its global name and shape) is what the user sees everywhere.

    dim     the split dimension of the logical tensor
    size    the logical size along `dim`
    parts   the number of shards (tp)
    rank    this shard's index
    chunks  `dim` is `chunks` equal blocks, each split on its own (a fused
            q|k|v projection: every shard holds its heads of q, of k and of v)

When `size` does not divide (a vocabulary), each shard holds ceil(size / parts)
rows and the last rows of the last shards are padding, zero and never used.
Nothing here touches MPI.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError


@dataclass(frozen=True)
class Split:
    dim: int
    size: int
    parts: int
    rank: int
    chunks: int = 1
    padded: bool = False   # True: size need not divide by parts (rows past size are padding)

    def __post_init__(self):
        block = self.size // self.chunks
        if self.size % self.chunks or (not self.padded and block % self.parts):
            raise UsageError(f"tensor parallelism: a dimension of {self.size} does not split into tp = "
                             f"{self.parts} equal parts; use a tp that divides {block}")

    @property
    def block(self) -> int:
        """Logical size of one chunk along `dim`."""
        return self.size // self.chunks

    @property
    def per(self) -> int:
        """This shard's rows of one chunk (padding included)."""
        return -(-self.block // self.parts)

    @property
    def local_size(self) -> int:
        return self.per * self.chunks

    def local_shape(self, logical: tuple[int, ...]) -> tuple[int, ...]:
        shape = list(logical)
        shape[self.dim] = self.local_size
        return tuple(shape)

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """This shard's slice of the logical tensor (a copy; padding rows are zero)."""
        if full.shape[self.dim] != self.size:
            raise UsageError(f"tensor parallelism: expected size {self.size} along dimension {self.dim}, "
                             f"got {list(full.shape)}")
        pieces = []
        for block in full.split(self.block, dim=self.dim):
            start = self.rank * self.per
            real = block.narrow(self.dim, min(start, self.block), max(0, min(self.per, self.block - start)))
            if real.shape[self.dim] < self.per:
                pad = list(real.shape)
                pad[self.dim] = self.per - real.shape[self.dim]
                real = torch.cat([real, real.new_zeros(pad)], dim=self.dim)
            pieces.append(real)
        return torch.cat(pieces, dim=self.dim).contiguous()

    def join(self, shards: list[torch.Tensor]) -> torch.Tensor:
        """The logical tensor from every shard's slice, in shard order."""
        if len(shards) != self.parts:
            raise UsageError(f"tensor parallelism: {len(shards)} shards given, {self.parts} expected")
        blocks = []
        for c in range(self.chunks):
            rows = [s.narrow(self.dim, c * self.per, self.per) for s in shards]
            blocks.append(torch.cat(rows, dim=self.dim).narrow(self.dim, 0, self.block))
        return torch.cat(blocks, dim=self.dim)

    def to_json(self) -> dict:
        return {"dim": self.dim, "size": self.size, "parts": self.parts, "chunks": self.chunks,
                "padded": self.padded}

    @classmethod
    def from_json(cls, d: dict, rank: int = 0) -> "Split":
        return cls(dim=d["dim"], size=d["size"], parts=d["parts"], rank=rank, chunks=d.get("chunks", 1),
                   padded=d.get("padded", False))

    def at(self, rank: int) -> "Split":
        return Split(self.dim, self.size, self.parts, rank, self.chunks, self.padded)


def split_of(t) -> Split | None:
    """The split of a parameter (None: replicated in the tensor group, or no tensor parallelism)."""
    s = getattr(t, "tp_split", None)
    return s if isinstance(s, Split) else None


def logical_shape(t: torch.Tensor) -> tuple[int, ...]:
    s = split_of(t)
    shape = list(t.shape)
    if s is not None:
        shape[s.dim] = s.size
    return tuple(shape)


def mark(param: torch.nn.Parameter, split: Split | None) -> torch.nn.Parameter:
    param.tp_split = split
    return param


def check_divides(where: str, key: str, value: int, tp: int) -> None:
    """One-line error when a model size `key` = `value` does not split over tp shards."""
    if tp > 1 and value % tp:
        from ..errors import ConfigError

        valid = [d for d in range(1, value + 1) if value % d == 0]
        raise ConfigError(f"{where}: {key} = {value} does not split over [grid] tp = {tp}; use tp in "
                          f"{', '.join(map(str, valid))} (divisors of {value}) or change {key}")
