"""The "Train your own model" code of the README runs as written: its task file,
its job file pointing at the task by path, and its API script, on 4 ranks."""
import json
import re

import pytest

from mpirun import ROOT, run_mpi

SECTION = "## Train your own model"


def readme_files() -> dict:
    """{file name: text} of the section's code blocks (each starts with '# NAME')."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    blocks = re.findall(r"```(?:python|toml)\n(# (\S+)\n.*?)```", section, flags=re.S)
    return {name: body for body, name in blocks}


@pytest.fixture
def project(tmp_path):
    files = readme_files()
    assert set(files) == {"my_task.py", "my_job.toml", "train_sine.py"}, set(files)
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    return tmp_path


def epochs(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["event"] == "epoch"]


def test_job_file_with_the_readme_task(project):
    result = run_mpi(4, ["-m", "mpitrain", "my_job.toml", "--set", "train.epochs=6"], timeout=240, cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = epochs(project / "runs" / "sine")
    assert len(lines) == 6 and lines[-1]["dev"]["loss"] < 0.5 * lines[0]["dev"]["loss"], lines


def test_api_script_of_the_readme(project):
    result = run_mpi(4, ["train_sine.py"], timeout=240, cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = epochs(project / "runs" / "sine-api")
    assert len(lines) == 20 and lines[-1]["dev"]["loss"] < 0.05, lines[-1]
