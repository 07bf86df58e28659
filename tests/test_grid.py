"""The rank grid: every factorisation of W = 1..8, checked against the documented order
world_rank = (stage * dp + replica) * tp + shard."""
import pytest

from mpitrain.grid import Coords, Grid, all_groups, coords_of, dp_group, factorisations, pp_group, rank_of, tp_group

GRIDS = [g for w in range(1, 9) for g in factorisations(w)] + [Grid(2, 2, 2), Grid(1, 2, 4), Grid(3, 1, 2)]


def test_factorisations_cover_every_divisor():
    assert [(g.dp, g.pp) for g in factorisations(8)] == [(8, 1), (4, 2), (2, 4), (1, 8)]
    assert [(g.dp, g.pp) for g in factorisations(6)] == [(6, 1), (3, 2), (2, 3), (1, 6)]
    assert [(g.dp, g.pp) for g in factorisations(7)] == [(7, 1), (1, 7)]
    assert factorisations(6, tp=4) == []


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"dp{g.dp}-pp{g.pp}-tp{g.tp}")
def test_documented_order_and_groups(grid):
    seen = set()
    for rank in range(grid.size):
        c = coords_of(rank, grid)
        assert rank == (c.pp * grid.dp + c.dp) * grid.tp + c.tp
        assert rank_of(c, grid) == rank
        seen.add((c.dp, c.pp, c.tp))
        dp, pp, tp = dp_group(rank, grid), pp_group(rank, grid), tp_group(rank, grid)
        assert len(dp) == grid.dp and len(pp) == grid.pp and len(tp) == grid.tp
        assert [coords_of(r, grid).dp for r in dp] == list(range(grid.dp))
        assert all(coords_of(r, grid).pp == c.pp and coords_of(r, grid).tp == c.tp for r in dp)
        assert [coords_of(r, grid).pp for r in pp] == list(range(grid.pp))
        assert all(coords_of(r, grid).dp == c.dp and coords_of(r, grid).tp == c.tp for r in pp)
        assert [coords_of(r, grid).tp for r in tp] == list(range(grid.tp))
        # the three groups meet only in this rank
        assert set(dp) & set(pp) == {rank} and set(dp) & set(tp) == {rank} and set(pp) & set(tp) == {rank}
    assert len(seen) == grid.size
    for kind, count in (("dp", grid.pp * grid.tp), ("pp", grid.dp * grid.tp), ("tp", grid.dp * grid.pp)):
        groups = all_groups(grid, kind)
        assert len(groups) == count
        assert sorted(r for g in groups for r in g) == list(range(grid.size))


def test_tensor_shards_then_replicas_are_adjacent():
    grid = Grid(dp=2, pp=2, tp=2)
    assert tp_group(0, grid) == [0, 1]
    assert dp_group(0, grid) == [0, 2]
    assert pp_group(0, grid) == [0, 4]
    assert coords_of(5, grid) == Coords(dp=0, pp=1, tp=1)


def test_rank_outside_grid():
    with pytest.raises(ValueError):
        coords_of(4, Grid(2, 2, 1))
