"""Column-parallel, row-parallel, vocabulary-parallel embedding and
cross-entropy equal their dense versions (1e-6), forward and backward, on tensor
groups of 2 and 4 ranks, with a vocabulary that does not divide."""
import pytest

from mpirun import run_mpi

from mpitrain.errors import UsageError
from mpitrain.tp.layers import padded_vocab, shard_range


@pytest.mark.parametrize("tp", [2, 4])
def test_layers_match_dense(tp):
    result = run_mpi(tp, ["tests/mpi_scripts/tp_layers_check.py"], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"TP OK {tp}" in result.stdout


def test_sizes():
    assert padded_vocab(11, 4) == 12 and padded_vocab(12, 4) == 12
    assert shard_range(16, 1, 4) == (4, 8)
    with pytest.raises(UsageError, match="does not split into tp = 3"):
        shard_range(16, 0, 3)
