"""The rank grid: one pure function maps world ranks onto dp x pp x tp.

Rank order (tensor index varies fastest, pipeline stage slowest)::

    world_rank = (stage * dp + replica) * tp + shard

Why: the heaviest traffic should stay inside a node, and consecutive world
ranks share a node under every launcher's default block placement. Tensor
shards all-reduce activations in every layer (most traffic), so they are
adjacent; data-parallel replicas all-reduce every gradient once per step
(next most); pipeline stages exchange only one micro-batch of activations per
boundary, point to point, so stages may sit on different nodes.

Nothing here touches MPI, so it is tested for every factorisation directly.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Grid:
    dp: int = 1
    pp: int = 1
    tp: int = 1

    @property
    def size(self) -> int:
        return self.dp * self.pp * self.tp


@dataclass(frozen=True)
class Coords:
    dp: int  # replica index
    pp: int  # pipeline stage
    tp: int  # tensor shard


def coords_of(rank: int, grid: Grid) -> Coords:
    if not 0 <= rank < grid.size:
        raise ValueError(f"rank {rank} outside a grid of {grid.size}")
    shard = rank % grid.tp
    replica = (rank // grid.tp) % grid.dp
    stage = rank // (grid.tp * grid.dp)
    return Coords(dp=replica, pp=stage, tp=shard)


def rank_of(c: Coords, grid: Grid) -> int:
    return (c.pp * grid.dp + c.dp) * grid.tp + c.tp


def dp_group(rank: int, grid: Grid) -> list[int]:
    """World ranks with the same stage and shard, ordered by replica."""
    c = coords_of(rank, grid)
    return [rank_of(Coords(d, c.pp, c.tp), grid) for d in range(grid.dp)]


def pp_group(rank: int, grid: Grid) -> list[int]:
    """World ranks with the same replica and shard, ordered by stage."""
    c = coords_of(rank, grid)
    return [rank_of(Coords(c.dp, s, c.tp), grid) for s in range(grid.pp)]


def tp_group(rank: int, grid: Grid) -> list[int]:
    """World ranks with the same replica and stage, ordered by shard."""
    c = coords_of(rank, grid)
    return [rank_of(Coords(c.dp, c.pp, t), grid) for t in range(grid.tp)]


def all_groups(grid: Grid, kind: str) -> list[list[int]]:
    """Every distinct group of one kind ('dp', 'pp' or 'tp'), ordered by first member."""
    fn = {"dp": dp_group, "pp": pp_group, "tp": tp_group}[kind]
    seen = {tuple(fn(r, grid)) for r in range(grid.size)}
    return [list(g) for g in sorted(seen)]


def factorisations(world_size: int, tp: int = 1) -> list[Grid]:
    """All grids (dp, pp) with dp * pp * tp == world_size."""
    if world_size % tp:
        return []
    rest = world_size // tp
    return [Grid(dp=rest // pp, pp=pp, tp=tp) for pp in range(1, rest + 1) if rest % pp == 0]
