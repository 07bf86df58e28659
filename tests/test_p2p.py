"""Point-to-point multi-tensor messages (2 ranks) and the receive buffer pool."""
import torch

from mpirun import ROOT, run_mpi
from mpitrain.comm.p2p import BufferPool

SCRIPT = ROOT / "tests" / "mpi_scripts" / "pipe_p2p.py"


def test_exchanges_between_two_ranks():
    proc = run_mpi(2, [SCRIPT], timeout=90)
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for check in ("rank 0 exchange", "rank 1 exchange", "rank 1 reuse", "rank 1 deferred release",
                  "rank 1 expect", "rank 1 order"):
        assert f"P2P-OK {check}" in out, out + proc.stderr


def test_buffer_pool_reuses_by_shape_and_dtype():
    pool = BufferPool(per_key=1)
    a = pool.get((2, 3), torch.float32)
    pool.put(a)
    assert pool.get((2, 3), torch.float32).data_ptr() == a.data_ptr()
    assert pool.get((2, 3), torch.float32).data_ptr() != a.data_ptr()  # pool is empty again
    pool.put(a)
    pool.put(a)  # the same buffer twice is kept once
    assert len(pool.free[(torch.float32, (2, 3))]) == 1
    assert pool.get((2, 3), torch.float64).dtype == torch.float64
    pool.put(torch.zeros(4, 4)[:, :2])  # views are not pooled
    assert (torch.float32, (4, 2)) not in pool.free
