"""Per-epoch shuffle and disjoint data-parallel shards.

Every replica computes the same permutation of ``range(num_samples)`` from
``(seed, epoch)``, cuts it into global batches of ``global_batch`` samples, and
takes its own slice of each: replica ``r`` of ``dp`` gets positions
``r, r + dp, r + 2*dp, ...`` of every global batch (``global_batch // dp`` samples).
The union over replicas of one step is exactly that step's global batch, so a
data-parallel run sees the same samples per step as a single process with the
same global batch.

The tail rule (``num_samples % global_batch`` samples left after the last full
batch):

* ``"drop"``: the tail is not used this epoch (it is a different set of samples
  each epoch, as the permutation changes). Every step is full.
* ``"pad"``: one more step is made from the tail, filled up with ``-1`` to the
  full global batch, so all replicas still take the same number of steps.
  Slots holding ``-1`` are padding: give them zero loss weight (``valid_mask``)
  and normalise the loss by the global count of real samples of the step, not by
  the batch size. A replica may get a step made only of padding.
"""
from __future__ import annotations

import numpy as np

from mpitrain.errors import UsageError

PAD = -1
TAILS = ("drop", "pad")


def epoch_permutation(num_samples: int, epoch: int, seed: int) -> np.ndarray:
    """The shuffle of one epoch, identical on every rank."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch)])
    return rng.permutation(num_samples).astype(np.int64)


def steps_per_epoch(num_samples: int, global_batch: int, tail: str = "drop") -> int:
    full, rest = divmod(num_samples, global_batch)
    return full + (1 if tail == "pad" and rest else 0)


def epoch_indices(num_samples: int, epoch: int, seed: int, dp_rank: int, dp_size: int,
                  global_batch: int, tail: str = "drop") -> list[np.ndarray]:
    """This replica's sample indices for every step of ``epoch`` (see the module docstring).

    Returns a list with one int64 array of ``global_batch // dp_size`` indices per
    step; with ``tail="pad"`` the last step may hold ``PAD`` (-1) entries.
    """
    _validate(num_samples, epoch, dp_rank, dp_size, global_batch, tail)
    perm = epoch_permutation(num_samples, epoch, seed)
    steps = steps_per_epoch(num_samples, global_batch, tail)
    used = steps * global_batch
    if used > num_samples:
        perm = np.concatenate([perm, np.full(used - num_samples, PAD, dtype=np.int64)])
    batches = perm[:used].reshape(steps, global_batch)
    mine = batches[:, dp_rank::dp_size]
    return [np.ascontiguousarray(row) for row in mine]


def valid_mask(indices: np.ndarray) -> np.ndarray:
    """True where ``indices`` holds a real sample, False on padding."""
    return np.asarray(indices) != PAD


def _validate(num_samples, epoch, dp_rank, dp_size, global_batch, tail):
    where = "data sharding"
    if tail not in TAILS:
        raise UsageError(f"{where}: tail={tail!r} is unknown; use 'drop' or 'pad'")
    if dp_size < 1 or not 0 <= dp_rank < dp_size:
        raise UsageError(f"{where}: dp_rank={dp_rank} is outside 0..{dp_size - 1}; "
                         "pass this replica's rank in the data-parallel group")
    if global_batch < 1 or global_batch % dp_size:
        raise UsageError(f"{where}: global_batch={global_batch} is not a positive multiple of "
                         f"dp={dp_size}; set the global batch to a multiple of the data-parallel size")
    if num_samples < 0 or epoch < 0:
        raise UsageError(f"{where}: num_samples={num_samples} and epoch={epoch} must be >= 0")
    if tail == "drop" and num_samples < global_batch:
        raise UsageError(f"{where}: {num_samples} samples make no full global batch of {global_batch} "
                         "with tail='drop'; lower the global batch or use tail='pad'")
