"""Slurm support on a real Slurm (the local one of slurm/local-cluster.sh, which
.ci/run starts): submit, the time-limit warning handled by checkpoint and
requeue with a bitwise-exact resume (whether every rank or only one got the
signal), the requeue cap, a job array, the batch script's exact text, and bad
submits. Tests that need Slurm skip, saying why, where there is none."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from checkpoints import checkpoint_tensors, final_checkpoint, train
from mpirun import ROOT
from slurm_helpers import (job_info, needs_slurm, signal_job, signal_rank, steps_logged, submit, wait_done,
                           wait_for)

from mpitrain.errors import UsageError
from mpitrain.slurm.env import check_world, requeue_id
from mpitrain.slurm.script import Request, render

JOB = "jobs/test_tiny_gpt.toml"
LONG = ["grid.pp=2", "train.epochs=12", "train.log_every=1"]


def sets(run_dir, prep, extra=()):
    out = []
    for s in [f'job.run_dir="{run_dir}"', f'data.prepared_dir="{prep}"', *extra]:
        out += ["--set", s]
    return out


def log_text(run_dir):
    return "".join(p.read_text() for p in run_dir.glob("slurm-*.out"))


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return tmp_path_factory.mktemp("prep")


@needs_slurm
def test_submit_runs_the_default_job(tmp_path):
    run_dir = tmp_path / "run"
    job = submit(["mpitrain/jobs/default.toml", *sets(run_dir, tmp_path / "prep", [
        "train.epochs=1", "data.synthetic_train=256", "data.synthetic_dev=64", "data.synthetic_test=64"])])
    info = wait_done(job)
    assert info["JobState"] == "COMPLETED", (info, log_text(run_dir)[-3000:])
    assert (run_dir / "submit.sbatch").is_file() and (run_dir / "checkpoints" / "latest").is_file()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert "dp 2 x pp 2" in log_text(run_dir)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, prep):
    """The uninterrupted run the requeued ones must equal (shared by those tests)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    train(2, JOB, run_dir, prep, LONG)
    return run_dir


def requeue_and_compare(tmp_path, prep, straight, signal, submit_args=()):
    run_dir = tmp_path / "slurm"
    job = submit([JOB, *submit_args, *sets(run_dir, prep, LONG)])
    wait_for(lambda: steps_logged(run_dir) >= 8, 180, "training to reach step 8")
    signal(job, run_dir)
    info = wait_done(job)
    log = log_text(run_dir)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, log[-3000:])
    assert "time-limit warning (SIGUSR2)" in log and "requeued Slurm job" in log and "resumed from" in log
    a, b = checkpoint_tensors(final_checkpoint(straight)), checkpoint_tensors(final_checkpoint(run_dir))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@needs_slurm
def test_warning_signal_checkpoints_requeues_and_resumes_bitwise(tmp_path, prep, straight):
    requeue_and_compare(tmp_path, prep, straight, lambda job, run_dir: signal_job(job))


@needs_slurm
def test_signal_to_one_rank_only_stops_all_of_them(tmp_path, prep, straight):
    requeue_and_compare(tmp_path, prep, straight, lambda job, run_dir: signal_rank(run_dir, 1))


@needs_slurm
def test_mpirun_launcher_gets_the_warning_through_the_batch_shell(tmp_path, prep, straight):
    def to_batch_shell(job, run_dir):
        subprocess.run(["scancel", "--batch", "--signal=USR2", job], check=True, timeout=30)
    requeue_and_compare(tmp_path, prep, straight, to_batch_shell, ["--launcher", "mpirun"])


@needs_slurm
def test_time_limit_requeues_are_capped(tmp_path, prep):
    run_dir = tmp_path / "capped"
    job = submit([JOB, *sets(run_dir, prep, LONG + ["slurm.max_requeues=1", "train.epochs=40"])])
    wait_for(lambda: steps_logged(run_dir) >= 5, 180, "training to start")
    signal_job(job)
    wait_for(lambda: job_info(job).get("Restarts") == "1" and job_info(job).get("JobState") == "RUNNING",
             120, "the requeued job to run")
    before = steps_logged(run_dir)
    wait_for(lambda: steps_logged(run_dir) >= before + 3, 180, "the requeued job to train")
    signal_job(job)
    info = wait_done(job)
    log = log_text(run_dir)
    assert info["Restarts"] == "1" and info["ExitCode"].startswith("76"), (info, log[-2000:])
    assert "not requeued: 1 time-limit requeues made" in log
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "running" and run["time_requeues"] == 1
    assert (run_dir / "checkpoints" / "latest").is_file()


@needs_slurm
def test_sigterm_checkpoints_and_stops_without_requeue(tmp_path, prep):
    run_dir = tmp_path / "term"
    job = submit([JOB, *sets(run_dir, prep, LONG + ["train.epochs=40"])])
    wait_for(lambda: steps_logged(run_dir) >= 5, 180, "training to start")
    subprocess.run(["scancel", "--signal=TERM", job], check=True, timeout=30)
    info = wait_done(job)
    log = log_text(run_dir)
    assert "SIGTERM at step" in log and "requeued" not in log, log[-2000:]
    assert info["Restarts"] == "0" and info["ExitCode"].startswith("76"), info
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert f"checkpoint {run_dir / 'checkpoints' / latest} committed" in log


def test_a_finished_run_is_not_run_again_when_requeued(tmp_path):
    from mpitrain.jobfile import load_job
    from mpitrain.train.run_dir import choose_run_dir, create_run_dir, mark_finished

    cfg = load_job(JOB, [f'job.run_dir="{tmp_path}/run"'])
    path, status = choose_run_dir(cfg, resume=True)
    assert status == "new" and not Path(path).exists()  # chosen, not created before the start succeeds
    create_run_dir(path, cfg)
    assert choose_run_dir(cfg, resume=True) == (path, "resume")
    mark_finished(path, cfg)
    assert choose_run_dir(cfg, resume=True, requeued=True) == (path, "finished")
    assert choose_run_dir(cfg, resume=True) == (f"{path}-2", "new")  # run by hand again: a new run


@needs_slurm
def test_without_scontrol_a_follow_up_job_continues_the_run(tmp_path, prep):
    """PATH without scontrol (as in a container): the stopped job is not requeued;
    the follow-up job submitted with it resumes and finishes the run."""
    import shutil

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun", "squeue", "sinfo", "scancel"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    run_dir = tmp_path / "run"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.path.dirname(sys.executable)}")
    result = subprocess.run([sys.executable, "-m", "mpitrain", "submit", JOB, "--follow-ups", "1",
                             *sets(run_dir, prep, LONG)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 0, result.stderr
    first = result.stdout.split("submitted Slurm job ")[1].split()[0]
    follow = result.stdout.split("follow-up jobs (each after the previous ends): ")[1].split()[0]
    wait_for(lambda: steps_logged(run_dir) >= 8, 180, "training to reach step 8")
    signal_job(first)
    assert wait_done(first)["ExitCode"].startswith("76")
    info = wait_done(follow)
    log = log_text(run_dir)
    assert info["JobState"] == "COMPLETED", (info, log[-2000:])
    assert "scontrol not found" in log and "resumed from" in log
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


@needs_slurm
def test_array_sweep_gives_one_run_per_value(tmp_path, prep):
    base = tmp_path / "sweep"
    job = submit([JOB, "--array", "train.lr=0.1,0.2", *sets(base, prep, ["train.epochs=1"])])
    for task in ("0", "1"):
        info = wait_done(f"{job}_{task}")
        assert info["JobState"] == "COMPLETED", info
    runs = {p.name: json.loads((p / "run.json").read_text()) for p in base.iterdir() if (p / "run.json").exists()}
    assert {name: r["job"]["train"]["lr"] for name, r in runs.items()} == {"0-0.1": 0.1, "1-0.2": 0.2}
    assert all(r["status"] == "finished" for r in runs.values())


@needs_slurm
def test_unknown_partition_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mpitrain", "submit", JOB, "--partition", "nosuch",
                             *sets(tmp_path / "run", tmp_path / "prep")], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "invalid partition" in lines[0], lines


def test_dry_run_matches_the_golden_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mpitrain", "submit", JOB, "--dry-run", "--nodes", "2",
                             "--gpus-per-node", "1", "--cpus-per-task", "4", "--time", "02:00:00", "--partition",
                             "gpu", "--set", "grid.dp=2", "--set", "train.epochs=3"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = result.stdout.replace(sys.executable, "@PYTHON@").replace(str(ROOT), "@ROOT@")
    assert text == (ROOT / "tests" / "golden" / "submit_dry_run.sbatch").read_text()


def test_mpirun_script_forwards_the_signal():
    r = Request(job_file="/j.toml", workdir="/w", python="/py", name="n", run_dir="/r", world=4, nodes=1,
                ntasks_per_node=4, launcher="mpirun")
    text = render(r)
    assert "#SBATCH --signal=B:USR2@120" in text and "trap 'touch \"$MPITRAIN_STOP_FILE\"' USR2" in text
    assert "mpirun -n 4 /py -m mpitrain train /j.toml" in text


@pytest.mark.parametrize("args,message", [
    (["--nodes", "3"], "--nodes 3 x --ntasks-per-node 1 = 3 tasks, but"),
    (["--nodes", "1", "--ntasks-per-node", "3"], "needs dp 1 x pp 1 x tp 1 = 1 ranks"),
])
def test_layout_mismatch_is_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "mpitrain", "submit", JOB, *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_no_sbatch_is_one_line(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))
    result = subprocess.run([sys.executable, "-m", "mpitrain", "submit", JOB, *sets(tmp_path / "r", tmp_path / "p")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "sbatch not found" in result.stderr


def test_world_must_match_slurm_ntasks():
    check_world(4, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"})
    check_world(4, {"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "1"})  # mpirun's helper step
    check_world(1, {})  # outside Slurm nothing is checked
    with pytest.raises(UsageError, match="Slurm started 4 tasks but MPI sees a world of 1"):
        check_world(1, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"})
    assert requeue_id({"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "8", "SLURM_ARRAY_TASK_ID": "1"}) == "8_1"
    assert requeue_id({"SLURM_JOB_ID": "9"}) == "9"


@needs_slurm
@pytest.mark.parametrize("sig,code", [("KILL", None), ("STOP", "77")])
def test_a_rank_that_dies_or_stops_under_srun_ends_the_job(tmp_path, prep, sig, code):
    """srun --kill-on-bad-exit=1: a SIGKILLed rank takes the step down at once; a
    stopped one is found by the stall watchdog (exit code 77). Either way the
    allocation is freed, no rank spins on."""
    run_dir = tmp_path / "fault"
    env = dict(os.environ, MPITRAIN_FAULT=f"rank=1,at=backward,nth=4,signal={sig}")
    result = subprocess.run([sys.executable, "-m", "mpitrain", "submit", JOB,
                             *sets(run_dir, prep, LONG + ["train.epochs=40", "runtime.stall_timeout=5"])],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    job = re.search(r"submitted Slurm job (\d+)", result.stdout).group(1)
    start = time.monotonic()
    info = wait_done(job, timeout=240)
    log = log_text(run_dir)
    assert "fault injection: backward #4" in log, log[-2000:]
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", (info, log[-2000:])
    if code:
        assert info["ExitCode"].startswith(code) and "rank(s) 1 reported no wait" in log, (info, log[-2000:])
    assert time.monotonic() - start < 200
