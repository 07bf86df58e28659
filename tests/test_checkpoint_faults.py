"""Checkpoints under faults and bad input: a rank killed in the middle of a save
leaves every committed checkpoint loadable and the run resumable; corrupt,
truncated or uncommitted checkpoints are skipped by auto-resume with a reason;
a named bad checkpoint, another model's, a newer format, an unwritable
directory: one line, exit code 2, nothing lost."""
import json
import shutil

import h5py
import numpy as np
import pytest

from checkpoints import crash_after, job_args, train
from mpirun import run_mpi, run_py

JOB = "jobs/test_tiny_gpt.toml"
SETS = ["grid.pp=2", "train.epochs=2", "checkpoint.every_steps=2", "checkpoint.keep=3"]


def committed(run_dir):
    root = run_dir / "checkpoints"
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / "manifest.json").exists())


def verify(path):
    return run_py(["-m", "mpitrain", "checkpoint", path], timeout=60)


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_rank_killed_during_a_save_leaves_only_loadable_checkpoints(tmp_path, seed):
    run_dir, prep = tmp_path / "run", tmp_path / "prep"
    killed = run_mpi(2, ["tests/mpi_scripts/kill_during_save.py", seed, *job_args(JOB, run_dir, prep, SETS)],
                     timeout=240)
    assert killed.returncode != 0 and "finished without being killed" not in killed.stdout, killed.stdout
    found = committed(run_dir)
    assert found, "no checkpoint survived"
    bad = [p.name for p in found if verify(p).returncode != 0]
    assert bad == [], f"unloadable checkpoints after the kill: {bad}"
    again = train(2, JOB, run_dir, prep, SETS)
    assert "resumed from" in again.stdout, again.stdout[-2000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """A run crashed after step 5: checkpoints step 2 and 4 committed (every 2 steps)."""
    tmp = tmp_path_factory.mktemp("crashed")
    crash_after(5, 2, JOB, tmp / "run", tmp / "prep", SETS)
    return tmp


def copy_run(crashed, tmp_path):
    shutil.copytree(crashed / "run", tmp_path / "run")
    return tmp_path / "run", crashed / "prep"


def corrupt_a_tensor(ckpt):
    manifest = json.loads((ckpt / "manifest.json").read_text())
    key, entry = next((k, e) for k, e in manifest["tensors"].items() if k.startswith("model/") and e["shape"])
    with h5py.File(ckpt / entry["file"], "r+") as f:
        f[key][...] = np.asarray(f[key][()]) + 1
    return key, entry["file"]


@pytest.mark.parametrize("damage", ["checksum", "truncated", "no manifest"])
def test_auto_resume_skips_a_damaged_latest_and_says_why(crashed, tmp_path, damage):
    run_dir, prep = copy_run(crashed, tmp_path)
    newest = run_dir / "checkpoints" / "step-00000004"
    if damage == "checksum":
        corrupt_a_tensor(newest)
        reason = "checksum mismatch"
    elif damage == "truncated":
        path = newest / "rank-00001.h5"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        reason = "truncated or corrupt"
    else:
        (newest / "manifest.json").unlink()
        reason = "never committed"
    again = train(2, JOB, run_dir, prep, SETS)
    assert "checkpoint step-00000004 skipped" in again.stdout and reason in again.stdout, again.stdout[-3000:]
    assert "resumed from" in again.stdout and "step-00000002" in again.stdout


def test_named_bad_checkpoint_is_one_line_naming_file_and_dataset(crashed, tmp_path):
    run_dir, prep = copy_run(crashed, tmp_path)
    ckpt = run_dir / "checkpoints" / "step-00000004"
    key, fname = corrupt_a_tensor(ckpt)
    result = run_mpi(2, ["-m", "mpitrain", "eval", *job_args(JOB, tmp_path / "other", prep, SETS),
                         "--checkpoint", ckpt], timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(ckpt / fname) in lines[0] and key in lines[0], lines
    shown = verify(ckpt)
    assert shown.returncode == 2 and key in shown.stderr and "checksum mismatch" in shown.stderr


def test_checkpoint_of_another_model_is_refused_and_nothing_is_touched(crashed, tmp_path):
    run_dir, prep = copy_run(crashed, tmp_path)
    ckpt = run_dir / "checkpoints" / "step-00000004"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (run_dir / "checkpoints").iterdir())
    result = run_mpi(2, ["-m", "mpitrain", *job_args(JOB, tmp_path / "wide", prep, SETS + ["model.n_embd=48"]),
                         "--resume", ckpt], timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'block.0.attn.c_attn.bias' has shape [96]" in lines[0] and "another model" in lines[0], lines
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (run_dir / "checkpoints").iterdir()) == before


def test_newer_format_version_is_refused(crashed, tmp_path):
    run_dir, _ = copy_run(crashed, tmp_path)
    manifest = run_dir / "checkpoints" / "step-00000004" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["format_version"] = 99
    manifest.write_text(json.dumps(data))
    shown = verify(manifest.parent)
    assert shown.returncode == 2 and "format version 99 is newer" in shown.stderr


def test_a_run_directory_of_another_job_is_refused(crashed, tmp_path):
    run_dir, prep = copy_run(crashed, tmp_path)
    result = run_mpi(2, ["-m", "mpitrain", *job_args(JOB, run_dir, prep, SETS + ["train.lr=0.1"])], timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds another job's run" in lines[0] and "[train] lr" in lines[0], lines


def test_unwritable_checkpoint_directory_stops_with_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_mpi(2, ["-m", "mpitrain", *job_args(JOB, tmp_path / "run", tmp_path / "prep",
                                                     SETS + [f'checkpoint.dir="{blocker}/ckpt"'])], timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot create" in lines[0] and "writable" in lines[0], lines


def test_failed_write_stops_training_and_keeps_the_previous_checkpoint(tmp_path):
    run_dir, prep = tmp_path / "run", tmp_path / "prep"
    result = run_mpi(2, ["tests/mpi_scripts/disk_full_at_save.py", "3", *job_args(JOB, run_dir, prep, SETS)],
                     timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and "step-00000004 is intact" in lines[0], lines
    assert [p.name for p in committed(run_dir)] == ["step-00000002", "step-00000004"]
    assert verify(run_dir / "checkpoints" / "step-00000004").returncode == 0
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000004"
