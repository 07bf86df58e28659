"""dp x pp pipeline training equals single-process training; failures end the job.

Each launch runs both schedules (GPipe and 1F1B) for 3 SGD steps with global
gradient clipping, on a model whose layers differ in width and whose
micro-batches are padded to different lengths, and compares every parameter
(by global name) with one process training on the whole global batch.
"""
import re
import subprocess

import pytest

from mpirun import ROOT, run_mpi

SCRIPTS = ROOT / "tests" / "mpi_scripts"

# (dp, pp, partition, tied): every partition method and tied weights within and across stages
CONFIGS = [
    (1, 1, "uniform", True),
    (1, 2, "parameters", False),
    (1, 4, "uniform", True),
    (2, 1, "uniform", False),
    (2, 2, "cuts:5", True),  # also: a wrong gradient scale must be caught
    (2, 4, "parameters", False),
]


def train(dp, pp, *extra, timeout=150):
    args = [SCRIPTS / "pipe_train.py", "--dp", dp, *extra]
    return run_mpi(dp * pp, args, timeout=timeout)


@pytest.mark.parametrize("dp,pp,method,tied", CONFIGS, ids=[f"dp{c[0]}-pp{c[1]}-{c[2]}{'-tied' if c[3] else ''}"
                                                            for c in CONFIGS])
def test_pipeline_matches_single_process(dp, pp, method, tied):
    negative = (dp, pp) == (2, 2)
    proc = train(dp, pp, "--partition", method, *(["--tied"] if tied else []),
                 *(["--negative"] if negative else []))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "PIPE-MISMATCH" not in log
    for schedule in ("gpipe", "1f1b"):
        assert proc.stdout.count(f" {schedule} params") == dp * pp, log
    if negative:
        assert "PIPE-NEGATIVE-DETECTED" in proc.stdout, log
    if pp == 2:
        # m = 4 = 2p micro-batches: 1F1B's first stage holds 2 micro-batches' activations, GPipe's 4
        peak = peaks(proc.stdout)
        assert 0 < peak[("1f1b", 0, 0)] < 0.75 * peak[("gpipe", 0, 0)], peak


def peaks(stdout):
    """{(schedule, stage, replica): peak activation bytes} from the PIPE-OK reports
    (ranks' lines may interleave)."""
    pattern = r"PIPE-OK rank \d+ stage (\d+) replica (\d+) (\w+) params \d+ max_diff \S+ peak_bytes (\d+)"
    return {(m[3], int(m[1]), int(m[2])): int(m[4]) for m in re.finditer(pattern, stdout)}


@pytest.mark.parametrize("ranks,mode,schedule,code,message", [
    (3, "shape", "1f1b", 1, "stage 1, micro-batch 0, layer 'bad' (inputs: ["),
    (3, "usage", "gpipe", 2, "stage 1, micro-batch 2, layer 'bad': flaky layer: bad input; fix the data"),
    (2, "count", "1f1b", 2, "stage 1, micro-batch 0: stage 0 runs 4 micro-batches in this step but this "
                            "stage runs 8"),
])
def test_failure_in_one_stage_ends_the_job(ranks, mode, schedule, code, message):
    try:
        proc = run_mpi(ranks, [SCRIPTS / "pipe_fail.py", "--mode", mode, "--schedule", schedule], timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a failing stage left the other stages hanging")
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "PIPE-UNEXPECTED" not in proc.stdout
