"""Data-parallel gradient averaging: equality with single-process training, edge cases."""
from pathlib import Path

import pytest
import torch
from torch import nn

from mpirun import run_mpi

SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"


@pytest.mark.parametrize("n,modes", [
    (1, "plain,accum"),
    (2, "plain,accum,compress,pad,auto,hooks"),
    (4, "plain,accum,compress,pad,groups"),
])
def test_data_parallel_matches_single_process(n, modes):
    res = run_mpi(n, [SCRIPTS / "dp_train_check.py", modes], timeout=150)
    assert res.returncode == 0, res.stdout + res.stderr
    for mode in modes.split(","):
        assert f"DP_OK {mode}" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("n", [3])
def test_edge_cases(n):
    res = run_mpi(n, [SCRIPTS / "dp_edge_check.py"], timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "DP_EDGE_OK" in res.stdout, res.stdout + res.stderr


def test_buckets_follow_sizes_and_dtypes():
    from mpitrain.dp.grad_sync import plan_buckets
    params = [(f"p{i}", nn.Parameter(torch.zeros(100))) for i in range(6)]
    params.insert(3, ("h", nn.Parameter(torch.zeros(10, dtype=torch.float64))))
    buckets = plan_buckets(list(reversed(params)), bucket_bytes=800, first_bucket_bytes=400)
    names = [[name for name, _, _ in b.params] for b in buckets]
    assert names[0] == ["p5"]                       # small first bucket
    assert ["h"] in names                           # float64 kept apart
    assert all(b.buffer.dtype == b.dtype and b.buffer.numel() == b.numel for b in buckets)
    flat = [name for ns in names for name in ns]
    assert sorted(flat) == sorted(name for name, _ in params)
    assert all(b.nbytes <= 800 for b in buckets)
