"""No silent hangs: a stopped rank ends the job through the stall watchdog (exit
code 77) with one line per waiting rank and the culprit named; mismatched
collectives fail at once with check_collectives; a NaN stops or skips the step
on every rank; the fault-injection suite's short version runs clean."""
import json
import subprocess
import sys
import time

import pytest

from mpirun import ROOT, run_mpi

from mpitrain.watchdog import CALIBRATION_STEPS, FLOOR, MULTIPLE, STARTUP, Watchdog

JOB = "jobs/test_tiny_gpt.toml"


def job_args(tmp, *sets):
    args = ["-m", "mpitrain", "train", JOB, "--set", f'job.run_dir="{tmp}/run"', "--set",
            f'data.prepared_dir="{tmp}/prep"']
    for s in sets:
        args += ["--set", s]
    return args


class _World:
    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def bcast(self, value, root=0):
        return value


def test_deadline_is_calibrated_from_the_first_steps():
    dog = Watchdog(_World(), "rank 0", None)
    assert dog.deadline == STARTUP
    for seconds in [0.5, 8.0, 1.0][:CALIBRATION_STEPS]:
        dog.observe_step(seconds)
    assert dog.deadline == max(FLOOR, MULTIPLE * 8.0)
    dog.observe_step(100.0)  # later steps do not move it
    assert dog.deadline == max(FLOOR, MULTIPLE * 8.0)
    fixed = Watchdog(_World(), "rank 0", None, timeout=7)
    fixed.observe_step(100.0)
    assert fixed.deadline == 7


def test_stopped_rank_ends_the_job_naming_it(tmp_path):
    start = time.monotonic()
    result = run_mpi(4, job_args(tmp_path, "grid.dp=2", "grid.pp=2", "runtime.stall_timeout=5"),
                     env={"MPITRAIN_FAULT": "rank=2,at=backward,nth=3,signal=STOP"}, timeout=120)
    took = time.monotonic() - start
    assert result.returncode == 77, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("mpitrain: stall:")]
    waits = [line for line in lines if " waited " in line]
    assert len(waits) == 3 and all("(deadline 5 s)" in line for line in waits), lines
    assert any("pipeline receive" in line and "with rank 2" in line for line in waits), waits
    verdicts = [line for line in lines if "reported no wait" in line]
    assert len(verdicts) == 1 and "rank(s) 2 reported no wait" in verdicts[0], lines
    stacks = (tmp_path / "run" / "logs" / "stall-rank-0.log").read_text()
    assert "Thread" in stacks and "File " in stacks  # faulthandler's dump
    assert took < 60


def test_mismatched_collectives_fail_at_once(tmp_path):
    script = tmp_path / "mismatch.py"
    script.write_text(
        "import numpy as np\n"
        "from mpi4py import MPI\n"
        "from mpitrain.comm.waits import MONITOR, WatchedComm\n"
        "from mpitrain.failure import install_failure_handler\n"
        "install_failure_handler()\n"
        "MONITOR.check_collectives = True\n"
        "comm = WatchedComm(MPI.COMM_WORLD, 'world')\n"
        "buf = np.zeros(4, np.float32)\n"
        "comm.Allreduce(MPI.IN_PLACE, buf)\n"
        "if comm.Get_rank() == 0:\n"
        "    comm.Allreduce(MPI.IN_PLACE, buf)\n"
        "else:\n"
        "    comm.Bcast(np.zeros(8, np.float64), root=0)\n")
    start = time.monotonic()
    result = run_mpi(2, [script], timeout=60)
    assert result.returncode != 0 and time.monotonic() - start < 30
    assert "mismatched collectives on the world group at collective #2" in result.stderr
    assert "rank 0: Allreduce float32[16]" in result.stderr and "rank 1: Bcast float64[64]" in result.stderr


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nan_on_one_rank_is_agreed_by_all(tmp_path, mode):
    result = run_mpi(2, job_args(tmp_path, "grid.dp=2", "checkpoint.every_steps=1", f'train.nonfinite="{mode}"'),
                     env={"MPITRAIN_FAULT": "rank=1,at=loss,nth=3,signal=NAN"}, timeout=180)
    root = tmp_path / "run" / "checkpoints"
    if mode == "stop":
        assert result.returncode == 78, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "non-finite loss or gradient norm at step 3" in lines[0], lines
        assert (root / "latest").read_text().strip() == "step-00000002"
        check = subprocess.run([sys.executable, "-m", "mpitrain", "checkpoint", str(root / "step-00000002")],
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stderr
    else:
        assert result.returncode == 0, result.stderr[-2000:]
        assert "step 3: non-finite loss or gradient norm; step skipped on every rank (1 so far)" in result.stdout
        epoch = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                 if '"epoch"' in x and '"train_loss"' in x][0]
        assert epoch["skipped_steps"] == 1 and epoch["train_loss"] == epoch["train_loss"]  # finite, not NaN


def test_fault_injection_suite_short(tmp_path):
    """Two trials of benchmarks/faults.py (seed 7: SIGKILL in a pipeline exchange on
    pp2, SIGSTOP in the gradient all-reduce on dp2): no hang, every exit within 30 s
    of the fault, no unloadable checkpoint."""
    out = tmp_path / "faults.json"
    result = subprocess.run([sys.executable, "benchmarks/faults.py", "--trials", "2", "--seed", "7",
                             "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and all(r["fired"] and not r["hung"] for r in rows)
    assert {r["signal"] for r in rows} == {"KILL", "STOP"}


def test_ctrl_c_under_mpiexec_checkpoints_and_exits_cleanly(tmp_path):
    """SIGINT to mpiexec (Ctrl-C): mpiexec forwards it, every rank stops at the next
    step boundary after a committed checkpoint, and the job exits with 76."""
    import os
    import signal

    from mpirun import mpiexec_path

    cmd = [mpiexec_path(), "-n", "2", sys.executable, *job_args(tmp_path, "grid.dp=2", "data.limit=0",
                                                                 "train.epochs=20", "checkpoint.every_epoch=false")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while not (tmp_path / "run" / "run.json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(4)  # training is under way
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 76, err[-2000:]
    assert "SIGINT (Ctrl-C) at step" in out and "committed" in out
    root = tmp_path / "run" / "checkpoints"
    latest = root / (root / "latest").read_text().strip()
    check = subprocess.run([sys.executable, "-m", "mpitrain", "checkpoint", str(latest)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert metrics.exists()
