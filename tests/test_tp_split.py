"""`Split`: a logical tensor cut into tensor-parallel shards and joined back, for
any dimension, fused blocks and padded (non-dividing) sizes. No MPI."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpitrain.errors import UsageError
from mpitrain.tp.sharding import Split, logical_shape, mark


@settings(max_examples=60, deadline=None)
@given(parts=st.integers(1, 5), chunks=st.integers(1, 3), per=st.integers(1, 4), other=st.integers(1, 3),
       dim=st.integers(0, 1), short=st.integers(0, 4), padded=st.booleans())
def test_take_then_join_is_the_identity(parts, chunks, per, other, dim, short, padded):
    block = per * parts - (min(short, per * parts - 1) if padded and chunks == 1 else 0)
    size = block * chunks
    shape = [size, other] if dim == 0 else [other, size]
    full = torch.randn(shape)
    shards = [Split(dim, size, parts, r, chunks, padded).take(full) for r in range(parts)]
    s0 = Split(dim, size, parts, 0, chunks, padded)
    assert all(tuple(t.shape) == s0.local_shape(tuple(shape)) for t in shards)
    assert torch.equal(s0.join(shards), full)


def test_fused_blocks_give_each_shard_its_part_of_every_block():
    full = torch.arange(12).reshape(12, 1)            # q = 0..3, k = 4..7, v = 8..11
    got = Split(0, 12, 2, 1, chunks=3).take(full).reshape(-1).tolist()
    assert got == [2, 3, 6, 7, 10, 11]


def test_padding_rows_are_zero_and_dropped_when_joined():
    full = torch.ones(5, 2)
    shards = [Split(0, 5, 2, r, padded=True).take(full) for r in range(2)]
    assert shards[1][-1].abs().sum() == 0 and shards[1].shape == (3, 2)
    assert torch.equal(Split(0, 5, 2, 0, padded=True).join(shards), full)


def test_json_round_trip_and_logical_shape():
    s = Split(1, 96, 4, 2, chunks=3)
    assert Split.from_json(s.to_json(), rank=2) == s
    p = mark(torch.nn.Parameter(torch.zeros(5, 24)), s)
    assert logical_shape(p) == (5, 96)


def test_sizes_that_do_not_split_are_refused():
    with pytest.raises(UsageError, match="does not split into tp = 4"):
        Split(0, 6, 4, 0)
