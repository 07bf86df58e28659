"""A failing rank ends the whole job quickly, with one message naming the rank.

MPICH's hydra mpiexec exits with the code a rank passes to MPI_Abort (measured:
MPI_Abort(comm, 1) -> 1, MPI_Abort(comm, 3) -> 3), and the failure handler aborts
with 1 on an uncaught exception. Starting 4 ranks that import torch takes about
4 s on 2 cores, the abort about 0.5 s; a job that hung would hit the timeout."""
import time

from mpirun import run_mpi

ABORT_EXIT_CODE = 1
MAX_SECONDS = 10


def failure_lines(result):
    """Every line, on either stream, in which mpitrain names a rank."""
    return [l for l in (result.stdout + result.stderr).splitlines() if "mpitrain: rank" in l]


def test_rank_2_of_4_raising_aborts_the_job_within_10s():
    start = time.monotonic()
    result = run_mpi(4, ["-m", "mpitrain", "selfcheck", "jobs/selfcheck.toml", "--raise-on-rank", "2"],
                     timeout=20)
    elapsed = time.monotonic() - start
    assert result.returncode == ABORT_EXIT_CODE, result.stderr[-3000:]
    assert elapsed < MAX_SECONDS, f"took {elapsed:.1f} s"
    assert failure_lines(result) == ["mpitrain: rank 2 (dp=0, pp=1, tp=0) failed: RuntimeError: raised on "
                                     "purpose by --raise-on-rank 2 -- aborting all ranks"]
    assert "selfcheck passed" not in result.stdout


def test_other_ranks_blocked_in_a_collective_are_released():
    # rank 0 raises while ranks 1..3 wait in an allreduce that can never complete
    script = ("from mpi4py import MPI\n"
              "from mpitrain.failure import install_failure_handler\n"
              "install_failure_handler()\n"
              "c = MPI.COMM_WORLD\n"
              "if c.rank == 0: raise ValueError('boom')\n"
              "c.allreduce(1)\n")
    start = time.monotonic()
    result = run_mpi(4, ["-c", script], timeout=20)
    elapsed = time.monotonic() - start
    assert result.returncode == ABORT_EXIT_CODE, result.stderr[-3000:]
    assert elapsed < MAX_SECONDS, f"took {elapsed:.1f} s"
    assert failure_lines(result) == ["mpitrain: rank 0 of 4 failed: ValueError: boom -- aborting all ranks"]
