"""Bad input at start-up, end to end: one line `mpitrain: error: ...` naming what is
wrong, where and the fix, printed once whatever the number of ranks, exit code 2,
and no run directory created or changed (README, "Bad input")."""
import json

import pytest

from mpirun import run_mpi, run_py

from mpitrain.jobfile import load_job
from mpitrain.train.run_dir import RUN_FILE, identity

TASK = '''
import os

import torch
from torch import nn

import mpitrain

BAD = os.environ.get("BAD", "")


class Points:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def batch(self, indices):
        x = torch.ones(len(indices), 2)
        return mpitrain.Batch((x,), torch.zeros(len(indices)), len(indices))


class SquaredError:
    def count(self, targets):
        return len(targets)

    def __call__(self, outputs, targets):
        return ((outputs.squeeze(-1) - targets) ** 2).sum()


def odd_builder():
    raise ValueError("hidden size must be even")


class Task(mpitrain.Task):
    def prepare(self, cfg):
        if BAD == "prepare":
            raise RuntimeError("cannot reach the data server")

    def datasets(self, cfg, prepared):
        if BAD == "datasets":
            raise KeyError("train.csv")
        if BAD == "no-train":
            return {"training": Points(64)}
        return {"train": Points(4 if BAD == "small" else 64)}

    def model(self, cfg, prepared):
        if BAD == "model":
            raise ValueError("unknown activation 'relu6'")
        if BAD == "not-a-model":
            return [nn.Linear(2, 1)]
        layers = [mpitrain.LayerSpec("a", lambda: nn.Linear(2, 2)),
                  mpitrain.LayerSpec("b", odd_builder if BAD == "builder" else (lambda: nn.Linear(2, 1)))]
        tied = [("a.weight", "b.wieght")] if BAD == "tied" else []
        return mpitrain.Model(layers, SquaredError(), tied=tied)
'''


@pytest.fixture
def job(tmp_path):
    (tmp_path / "task.py").write_text(TASK)
    path = tmp_path / "job.toml"
    path.write_text(f'[job]\nname = "bad"\ntask = "task.py:Task"\nrun_dir = "{tmp_path / "run"}"\n'
                    "[grid]\npp = 2\n[train]\nglobal_batch = 8\nmax_steps = 2\n")
    return path


def the_error(result) -> str:
    """The one error line (and no other line on stderr); exit code 2."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpitrain: error: "), lines
    return lines[0]


def train(n, job, *sets, env=None):
    args = ["-m", "mpitrain", "train", job]
    for s in sets:
        args += ["--set", s]
    return run_mpi(n, args, timeout=120, env=env)


TASK_FAULTS = {
    "prepare": ["task.py:Task", "prepare(cfg) raised RuntimeError: cannot reach the data server", "task.py:",
                "fix the task's code"],
    "datasets": ["datasets(cfg, prepared) raised KeyError: 'train.csv'", "task.py:"],
    "model": ["model(cfg, prepared) raised ValueError: unknown activation 'relu6'", "task.py:"],
    "no-train": ["datasets() returned no 'train' split"],
    "not-a-model": ["model() returned list, not mpitrain.Model"],
    "small": ["train split has 4 samples, fewer than [train] global_batch = 8", "tail"],
    "builder": ["layer 'b': its builder raised ValueError: hidden size must be even", "task.py:", "fix the builder"],
    "tied": ["tied weights: layer 'b' has no parameter 'wieght'; did you mean 'b.weight'?"],
}


@pytest.mark.parametrize("bad", sorted(TASK_FAULTS))
def test_task_code_that_raises_or_returns_nonsense(job, tmp_path, bad):
    line = the_error(train(2, job, env={"BAD": bad}))
    assert all(w in line for w in TASK_FAULTS[bad]), line
    assert not (tmp_path / "run").exists()  # a failed start leaves no run directory


@pytest.mark.parametrize("n,sets,words", [
    (4, ["grid.pp=4", 'pipeline.partition="cuts"', "pipeline.cuts=[1,2,9]"],
     ["cut points [1, 2, 9] leave stage 3 empty", "strictly increasing"]),
    (3, ["grid.dp=3", "train.global_batch=8"], ["global_batch = 8 is not divisible by dp = 3", "multiple of 3"]),
])
def test_impossible_layouts_are_reported_once(tmp_path, n, sets, words):
    line = the_error(train(n, "jobs/test_tiny_ner.toml", f'job.run_dir="{tmp_path / "run"}"',
                           f'data.prepared_dir="{tmp_path / "prep"}"', *sets))
    assert all(w in line for w in words), line
    assert not (tmp_path / "run").exists()


def test_more_stages_than_layers(job, tmp_path):
    line = the_error(train(3, job, "grid.pp=3", "train.global_batch=6"))
    assert "3 stages but the model has only 2 layers" in line and "pp <= 2" in line, line
    assert not (tmp_path / "run").exists()


def test_grid_that_does_not_match_the_world_leaves_no_run_directory(job, tmp_path):
    line = the_error(train(3, job))
    assert "dp*pp*tp = 1*2*1 = 2 but the job has 3 ranks" in line, line
    assert not (tmp_path / "run").exists()


def test_missing_data_directory_leaves_no_run_directory(tmp_path):
    line = the_error(train(2, "jobs/bert_ner_wikiann.toml", "grid.dp=2", f'data.dir="{tmp_path}/nowhere"',
                           f'job.run_dir="{tmp_path}/run"', f'data.prepared_dir="{tmp_path}/prep"'))
    assert "nowhere" in line and "not found" in line, line
    assert not (tmp_path / "run").exists()


def snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
                  for p in folder.rglob("*"))


def test_a_failed_start_changes_no_existing_run_directory(job, tmp_path):
    """An earlier run that finished (the next start would use run-2) and a directory
    holding files but no run: neither is touched, and run-2 is not made."""
    run, notes = tmp_path / "run", tmp_path / "notes"
    run.mkdir()
    (run / RUN_FILE).write_text(json.dumps({"job": identity(load_job(job)), "status": "finished"}))
    (run / "metrics.jsonl").write_text("{}\n")
    notes.mkdir()
    (notes / "README").write_text("mine")
    before = snapshot(tmp_path)
    the_error(train(2, job, env={"BAD": "model"}))
    the_error(train(2, job, f'job.run_dir="{notes}"', env={"BAD": "model"}))
    assert snapshot(tmp_path) == before


def test_a_run_directory_that_cannot_be_made(job, tmp_path):
    (tmp_path / "file").write_text("in the way")
    line = the_error(train(2, job, f'job.run_dir="{tmp_path / "file" / "run"}"'))
    assert "cannot create" in line and str(tmp_path / "file") in line, line


def test_a_manifest_that_is_not_one(tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]")
    line = the_error(run_py(["-m", "mpitrain", "checkpoint", tmp_path], timeout=60))
    assert "a JSON list, not an object" in line and "use an earlier checkpoint" in line, line


def test_a_job_file_that_is_a_directory(tmp_path):
    line = the_error(run_py(["-m", "mpitrain", "plan", tmp_path], timeout=60))
    assert str(tmp_path) in line and "cannot read the job file" in line, line


def test_a_value_that_is_not_finite(tmp_path):
    line = the_error(run_py(["-m", "mpitrain", "plan", "jobs/test_tiny_ner.toml", "--set", "train.lr=nan"],
                            timeout=60))
    assert "--set train.lr=nan: expected a finite number" in line, line
