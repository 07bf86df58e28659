"""Ring all-reduce: equality with MPI_Allreduce, dispatch, compression, mismatch errors."""
from pathlib import Path

import pytest
import torch

from mpirun import run_mpi

SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"


@pytest.mark.parametrize("world,groups", [(3, "3,1,2"), (4, "4"), (5, "5")])
def test_ring_matches_mpi_allreduce(world, groups):
    """Group sizes 1..5; sizes 1 and 2 run on communicators split from a larger world.
    Random data must lie within the float rounding bound, integers and wire-rounded
    data exactly on the reference; with K > 1 compression must be seen rounding."""
    res = run_mpi(world, [SCRIPTS / "ring_check.py", groups], timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    for k in groups.split(","):
        assert f"RING_OK {k} " in res.stdout, res.stdout + res.stderr
        assert (f"WIRE_ROUNDING_OK {k}\n" in res.stdout) == (k != "1"), res.stdout


def test_mismatch_is_a_clear_error():
    res = run_mpi(3, [SCRIPTS / "ring_mismatch.py"], timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "MISMATCH_DONE" in res.stdout, res.stdout + res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("MISMATCH_RAISED")]
    assert len(lines) == 12, res.stdout + res.stderr
    for case in ("size/ring", "dtype/ring", "size/mpi", "dtype/auto"):
        mine = [ln for ln in lines if f" {case} " in ln]
        assert len(mine) == 3, (case, res.stdout)
        assert "rank 1:" in mine[0] and "ranks 0,2:" in mine[0], mine[0]


def test_segment_bounds_cover_everything():
    from mpitrain.comm.ring import segment_bounds
    for numel in (0, 1, 4, 5, 17):
        for n in (1, 2, 3, 5):
            b = segment_bounds(numel, n)
            assert len(b) == n and b[0][0] == 0 and b[-1][1] == numel
            assert all(b[i][1] == b[i + 1][0] for i in range(n - 1))
            sizes = [e - s for s, e in b]
            assert max(sizes) - min(sizes) <= 1


def test_bad_arguments_are_usage_errors():
    from mpi4py import MPI

    from mpitrain.comm.allreduce import AllReducer
    from mpitrain.errors import UsageError
    with pytest.raises(UsageError, match="algorithm"):
        AllReducer(MPI.COMM_SELF, "tree")
    with pytest.raises(UsageError, match="compress"):
        AllReducer(MPI.COMM_SELF, "ring", compress="int8")
    red = AllReducer(MPI.COMM_SELF, "ring")
    with pytest.raises(UsageError, match="dtype"):
        red.allreduce_(torch.ones(3, dtype=torch.complex64))
    x = torch.ones(3)
    assert torch.equal(red.allreduce_(x, average=True), torch.ones(3))


def test_cuda_aware_env_override(monkeypatch):
    from mpitrain.comm import device_buffers as dev
    for value, expected in (("1", True), ("0", False)):
        monkeypatch.setenv(dev.ENV_CUDA_AWARE, value)
        dev.cuda_aware.cache_clear()
        assert dev.cuda_aware() is expected
    dev.cuda_aware.cache_clear()


def test_crossover_choice_is_robust():
    import numpy as np

    from mpitrain.comm.crossover import crossover_from_times
    sizes = (4, 16, 64, 256)
    mpi = np.array([1.0, 2.0, 3.0, 4.0])
    assert crossover_from_times(sizes, mpi, np.array([2.0, 3.0, 2.0, 1.0])) == 32
    assert crossover_from_times(sizes, mpi, np.array([2.0, 3.0, 4.0, 5.0])) == 512
    assert crossover_from_times(sizes, mpi, np.array([0.5, 1.0, 1.0, 1.0])) == 0
    assert crossover_from_times(sizes, mpi, np.array([2.0, 3.0, 2.0, 4.1])) == 32  # one noisy probe
