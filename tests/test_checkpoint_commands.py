"""A finished run's checkpoint, used on another layout: `eval` reproduces the
run's dev metrics, `export` writes the model the run exported, `checkpoint`
shows and verifies it."""
import json

import pytest
from safetensors.numpy import load_file

from checkpoints import final_checkpoint, job_args, train
from mpirun import run_mpi, run_py

JOB = "jobs/test_tiny_gpt.toml"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    train(2, JOB, tmp / "run", tmp / "prep", ["grid.pp=2", "train.epochs=2"])
    return tmp


def test_eval_on_another_layout_gives_the_runs_dev_metrics(finished, tmp_path):
    ckpt = final_checkpoint(finished / "run")
    result = run_mpi(2, ["-m", "mpitrain", "eval", *job_args(JOB, tmp_path / "x", finished / "prep", ["grid.dp=2"]),
                         "--checkpoint", ckpt, "--split", "dev"], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout[result.stdout.index("{"):])
    run = [json.loads(x) for x in (finished / "run" / "metrics.jsonl").read_text().splitlines()]
    dev = [x["dev"] for x in run if x["event"] == "epoch"][-1]
    assert got["step"] == 12 and abs(got["dev"]["loss"] - dev["loss"]) < 1e-6, (got, dev)
    assert not (tmp_path / "x").exists()  # evaluation writes no run directory


def test_export_from_a_checkpoint_equals_the_runs_export(finished, tmp_path):
    ckpt = final_checkpoint(finished / "run")
    result = run_mpi(1, ["-m", "mpitrain", "export", *job_args(JOB, tmp_path / "x", finished / "prep",
                                                                ["grid.pp=1"]),
                         "--checkpoint", ckpt, "--out", tmp_path / "hf"], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    ours, theirs = load_file(tmp_path / "hf" / "model.safetensors"), load_file(finished / "run" / "model" /
                                                                              "model.safetensors")
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)


def test_checkpoint_command_shows_and_verifies(finished):
    shown = run_py(["-m", "mpitrain", "checkpoint", finished / "run" / "checkpoints", "--tensors"], timeout=60)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "task gpt" in out and "step 12" in out and "saved on dp 1 x pp 2 x tp 1 (2 ranks)" in out
    assert "model/embed.wte.weight" in out and "checksums verified" in out
