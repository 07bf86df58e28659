"""The user model of examples/spirals (a task outside the package, named by file
path in its job file) trains like one process on every layout; its API script
runs under mpiexec; and every way a task can be wrong is one clear error."""
import json

import pytest

from layouts import TOL, reference_parameters, train_layout, worst_difference
from mpirun import ROOT, run_mpi

from mpitrain.errors import ConfigError
from mpitrain.jobfile import load_job

JOB = "examples/spirals/job.toml"
# a few steps of SGD, no clipping reached: sensitive to any gradient error
QUICK = ["train.epochs=1", "train.max_steps=6", 'train.optimizer="sgd"', "train.momentum=0.9",
         "train.lr=1.0", "train.max_grad_norm=100.0", "data.train=512"]


def overrides(tmp):
    return QUICK + [f'job.run_dir="{tmp}/run"']


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    final, moved = reference_parameters(JOB, overrides(tmp_path_factory.mktemp("ref")))
    assert min(moved.values()) > 10 * TOL, moved
    return final


@pytest.mark.parametrize("dp,pp", [(2, 1), (1, 2), (1, 3), (2, 2)])
def test_layout_matches_single_process(reference, tmp_path, dp, pp):
    worst = worst_difference(train_layout(tmp_path, JOB, overrides(tmp_path), dp, pp), reference)
    assert worst < TOL, f"dp={dp} pp={pp}: max |difference| {worst:.2e}"


def test_wrong_gradient_scale_is_caught(reference, tmp_path):
    got = train_layout(tmp_path, JOB, overrides(tmp_path), 2, 2, extra=["--wrong-grad-scale"])
    assert worst_difference(got, reference) > 100 * TOL


def test_api_script_under_mpiexec(tmp_path):
    result = run_mpi(4, ["train.py", "--set", "train.epochs=8", "--set", f'job.run_dir="{tmp_path}/run"'],
                     timeout=300, cwd=ROOT / "examples" / "spirals")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dp 2 x pp 2" in result.stdout
    test = json.loads((tmp_path / "run" / "eval_test.json").read_text())
    assert test["accuracy"] > 0.85, test  # 3 classes: chance is 1/3
    assert f"test accuracy {test['accuracy']:.3f}" in result.stdout
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in lines if x["event"] == "epoch"]
    steps = [x for x in lines if x["event"] == "step"]
    assert len(epochs) == 8 and epochs[-1]["dev"]["loss"] < epochs[0]["dev"]["loss"]
    assert steps and set(steps[0]) >= {"step", "loss", "lr", "grad_norm", "tokens_per_s"}


def write_job(tmp_path, task: str, extra: str = "") -> str:
    job = tmp_path / "job.toml"
    job.write_text(f'[job]\ntask = "{task}"\n{extra}')
    return str(job)


def test_task_given_by_file_path_resolves_relative_to_the_job_file():
    cfg = load_job(JOB)
    assert type(cfg.task).__name__ == "SpiralsTask" and cfg.model.layers == 4 and cfg.data.arms == 3


@pytest.mark.parametrize("task,extra,message", [
    ("no_such_module_xyz:make", "", "cannot import module 'no_such_module_xyz'"),
    ("json:no_factory", "", "'json' has no 'no_factory'"),
    ("missing.py:make", "", "missing.py not found"),
    ("json:JSONDecoder", "", "has no method datasets, model"),
    ("spirals:SpiralsTask", "[model]\nhiden = 3\n", "unknown key 'hiden' in [model]; did you mean 'hidden'?"),
    ("spirals:SpiralsTask", "[modle]\n", "unknown section [modle]; did you mean 'model'?"),
    ("spirals:SpiralsTask", "[data]\narms = 1\n", "below the minimum 2"),
    ("nonsense", "", "not a built-in task"),
])
def test_task_errors_are_one_line(tmp_path, monkeypatch, task, extra, message):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "spirals"))
    with pytest.raises(ConfigError) as err:
        load_job(write_job(tmp_path, task, extra))
    text = str(err.value)
    assert message in text and "\n" not in text and str(tmp_path / "job.toml") in text


def test_task_error_from_the_command_line_exits_2(tmp_path):
    result = run_mpi(2, ["-m", "mpitrain", write_job(tmp_path, "json:no_factory", "[grid]\ndp = 2\n")],
                     timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpitrain: error: ") and "no_factory" in lines[0]
