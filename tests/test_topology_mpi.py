"""Communicators built by mpitrain.topology under a real mpiexec, and the selfcheck command."""
import re

from mpirun import run_mpi

from mpitrain.grid import factorisations


def test_every_grid_up_to_8_ranks():
    result = run_mpi(8, ["tests/mpi_scripts/topology_all_grids.py"], timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(map(int, m) for m in re.findall(r"rank (\d+) checked (\d+) grids", result.stdout))
    assert sorted(counts) == list(range(8))
    for rank, n in counts.items():
        # rank r takes part in every world size w > r
        assert n == sum(len(factorisations(w)) for w in range(rank + 1, 9)), (rank, n)


def test_selfcheck_command_on_4_ranks():
    result = run_mpi(4, ["-m", "mpitrain", "selfcheck", "jobs/selfcheck.toml"], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "selfcheck passed" in result.stdout
    rows = re.findall(r"^\s+(\d) +(\d) +(\d) +0 ", result.stdout, re.M)
    assert rows == [("0", "0", "0"), ("1", "1", "0"), ("2", "0", "1"), ("3", "1", "1")]


def test_selfcheck_single_rank_without_mpiexec():
    from mpirun import run_py

    result = run_py(["-m", "mpitrain", "selfcheck"], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "selfcheck passed" in result.stdout


def test_rank_logs_and_quiet_ranks(tmp_path):
    result = run_mpi(2, ["-m", "mpitrain", "selfcheck", "--set", "grid.dp=2", "--set", "runtime.rank_logs=true",
                         "--set", f'job.run_dir="{tmp_path}"'], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[rank 1]" not in result.stdout  # only rank 0 speaks by default
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == ["rank-0.log", "rank-1.log"]
    assert "selfcheck passed" in (tmp_path / "logs" / "rank-0.log").read_text()
