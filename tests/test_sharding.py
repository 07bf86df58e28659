"""Per-epoch shuffle and disjoint shards with the drop / pad tail rules."""
import numpy as np
import pytest

from mpitrain.data.sharding import PAD, epoch_indices, steps_per_epoch, valid_mask
from mpitrain.errors import UsageError


def all_replicas(num, epoch, seed, dp, gb, tail):
    return [epoch_indices(num, epoch, seed, r, dp, gb, tail) for r in range(dp)]


@pytest.mark.parametrize("dp", [1, 2, 3, 4])
def test_drop_gives_disjoint_full_steps(dp):
    num, gb = 103, 12
    reps = all_replicas(num, 0, 7, dp, gb, "drop")
    steps = num // gb
    assert all(len(r) == steps for r in reps)
    assert all(len(step) == gb // dp for r in reps for step in r)
    seen = np.concatenate([s for r in reps for s in r])
    assert len(seen) == steps * gb == len(set(seen.tolist()))
    assert seen.min() >= 0 and seen.max() < num


@pytest.mark.parametrize("dp", [1, 2, 4])
def test_pad_covers_every_sample_once(dp):
    num, gb = 103, 12
    reps = all_replicas(num, 3, 7, dp, gb, "pad")
    assert all(len(r) == steps_per_epoch(num, gb, "pad") == 9 for r in reps)
    flat = np.concatenate([s for r in reps for s in r])
    real = flat[valid_mask(flat)]
    assert sorted(real.tolist()) == list(range(num))
    assert (flat == PAD).sum() == 9 * gb - num
    # padding only in the last step
    assert all(valid_mask(s).all() for r in reps for s in r[:-1])


def test_union_of_a_step_is_the_single_process_batch():
    num, gb = 64, 8
    single = epoch_indices(num, 2, 5, 0, 1, gb)
    for dp in (2, 4):
        reps = all_replicas(num, 2, 5, dp, gb, "drop")
        for step in range(len(single)):
            union = sorted(np.concatenate([r[step] for r in reps]).tolist())
            assert union == sorted(single[step].tolist())


def test_shuffle_is_deterministic_and_changes_per_epoch():
    a = epoch_indices(50, 1, 9, 0, 2, 10)
    b = epoch_indices(50, 1, 9, 0, 2, 10)
    c = epoch_indices(50, 2, 9, 0, 2, 10)
    d = epoch_indices(50, 1, 10, 0, 2, 10)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert not all(np.array_equal(x, y) for x, y in zip(a, d))


def test_usage_errors():
    with pytest.raises(UsageError, match="multiple"):
        epoch_indices(100, 0, 0, 0, 3, 10)
    with pytest.raises(UsageError, match="tail"):
        epoch_indices(100, 0, 0, 0, 2, 10, tail="wrap")
    with pytest.raises(UsageError, match="dp_rank"):
        epoch_indices(100, 0, 0, 2, 2, 10)
    with pytest.raises(UsageError, match="pad"):
        epoch_indices(5, 0, 0, 0, 2, 10)
    assert len(epoch_indices(5, 0, 0, 0, 2, 10, tail="pad")) == 1
