"""Driving the local Slurm from tests: submit, wait, read a job's state, signal ranks."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpirun import ROOT


def slurm_up() -> bool:
    if shutil.which("sbatch") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_slurm = pytest.mark.skipif(not slurm_up(), reason="no Slurm here (sbatch missing or no controller); "
                                                         "`bash slurm/local-cluster.sh start` starts one")


def submit(args, timeout=120) -> str:
    result = subprocess.run([sys.executable, "-m", "mpitrain", "submit", *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return re.search(r"submitted Slurm job (\d+)", result.stdout).group(1)


def job_info(job_id: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_done(job_id: str, timeout: float = 300) -> dict:
    """Until the job (with any requeues) has ended; its final scontrol record."""
    def ended():
        info = job_info(job_id)
        return info if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") else None
    try:
        return wait_for(ended, timeout, f"Slurm job {job_id} to end")
    except AssertionError:
        subprocess.run(["scancel", job_id], timeout=30)
        raise


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_text().count('"event": "step"') if path.exists() else 0


def rank_pids(run_dir: Path) -> dict[int, int]:
    """{SLURM_PROCID: pid} of the training ranks whose command line names run_dir."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = dict(x.split(b"=", 1) for x in (proc / "environ").read_bytes().split(b"\0") if b"=" in x)
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"python") and str(run_dir).encode() in b" ".join(cmd) and b"SLURM_PROCID" in env:
            found[int(env[b"SLURM_PROCID"])] = int(proc.name)
    return found


def signal_job(job_id: str) -> None:
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)


def signal_rank(run_dir: Path, rank: int) -> None:
    os.kill(rank_pids(run_dir)[rank], signal.SIGUSR2)
