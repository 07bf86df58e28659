"""A failing rank ends the whole job quickly, with one message naming the rank."""
import time

from mpirun import run_mpi


def test_rank_2_of_4_raising_aborts_the_job_within_30s():
    start = time.monotonic()
    result = run_mpi(4, ["-m", "mpitrain", "selfcheck", "jobs/selfcheck.toml", "--raise-on-rank", "2"],
                     timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 30, f"took {elapsed:.1f} s"
    lines = [l for l in result.stderr.splitlines() if l.startswith("mpitrain: rank")]
    assert lines == ["mpitrain: rank 2 (dp=0, pp=1, tp=0) failed: RuntimeError: raised on purpose "
                     "by --raise-on-rank 2 -- aborting all ranks"]
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
    result = run_mpi(4, ["-c", script], timeout=60)
    assert result.returncode != 0
    assert time.monotonic() - start < 30
    assert "mpitrain: rank 0 of 4 failed: ValueError: boom -- aborting all ranks" in result.stderr
