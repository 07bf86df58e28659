"""Shared-memory all-reduce within a node and hierarchical across (simulated) nodes.

MPICH's MPIR_CVAR_NUM_CLIQUES=K splits the processes of one machine into K
simulated nodes (round robin: with K=2, ranks 0,2,... and 1,3,...): the node
communicator, and so the shared-memory windows, stay inside each.
"""
from pathlib import Path

from mpirun import run_mpi

SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"


def test_shared_memory_gives_the_rings_bits_on_one_node():
    """3 ranks (the fold of three buffers): all-reduce, sum and mean, reduce-scatter and
    all-gather equal the flat ring bit for bit, on every rank and run to run;
    gradient buckets are shared memory and average like the ring's."""
    res = run_mpi(3, [SCRIPTS / "shm_check.py"], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SHM_OK 3 3 node") == 3, res.stdout + res.stderr


def test_hierarchical_on_two_simulated_nodes():
    """4 ranks as 2 nodes x 2: exactly summable data gives the flat ring's bits,
    any data the same bits on every rank and run to run, within n*eps*sum|x| of the ring."""
    res = run_mpi(4, [SCRIPTS / "shm_check.py"], timeout=120, env={"MPIR_CVAR_NUM_CLIQUES": "2"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SHM_OK 2 4 hierarchical") == 4, res.stdout + res.stderr


def test_uneven_nodes_are_a_clear_error():
    res = run_mpi(3, [SCRIPTS / "shm_check.py", "uneven"], timeout=60, env={"MPIR_CVAR_NUM_CLIQUES": "2"})
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("UNEVEN")]
    assert len(lines) == 3, res.stdout
    assert "same number of group ranks on every node, found [1, 2]" in lines[0], lines[0]
