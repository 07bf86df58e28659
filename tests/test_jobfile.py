"""Job files: validation errors are one line naming file, key and fix; exit code 2."""
import pytest

from mpirun import run_mpi, run_py

from mpitrain.errors import ConfigError
from mpitrain.jobfile import load_job, parse_override


def write(tmp_path, text, name="job.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_job(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_file_and_typed_overrides(tmp_path):
    path = write(tmp_path, '[grid]\ndp = 2\npp = 2\n[comm]\nbucket_mb = 4\nalgorithm = "ring"\n')
    cfg = load_job(path, ["train.lr=1e-4", "comm.compress=bf16", "job.name=x", "runtime.verbose=true",
                          "pipeline.partition=\"cuts\"", "pipeline.cuts=[3]"])
    assert (cfg.grid.dp, cfg.grid.pp, cfg.grid.tp) == (2, 2, 1)
    assert cfg.comm.bucket_mb == 4.0 and isinstance(cfg.comm.bucket_mb, float)
    assert cfg.comm.algorithm == "ring" and cfg.comm.compress == "bf16"
    assert cfg.train.lr == 1e-4 and cfg.job.name == "x" and cfg.runtime.verbose is True
    assert cfg.pipeline.cuts == [3]
    assert cfg.run_dir == "runs/x"


def test_every_shipped_job_validates():
    from pathlib import Path
    jobs = sorted(Path(__file__).resolve().parent.parent.glob("jobs/*.toml"))
    assert jobs
    for job in jobs:
        load_job(job)


def test_unknown_key_suggests_the_closest(tmp_path):
    msg = error_of(write(tmp_path, "[comm]\nbuckt_mb = 4\n"))
    assert msg.startswith(f"{tmp_path / 'job.toml'}: [comm] buckt_mb: unknown key 'buckt_mb'")
    assert "did you mean 'bucket_mb'?" in msg


def test_unknown_section(tmp_path):
    msg = error_of(write(tmp_path, "[gird]\ndp = 2\n"))
    assert "unknown section [gird]" in msg and "did you mean 'grid'?" in msg


def test_wrong_type(tmp_path):
    msg = error_of(write(tmp_path, '[grid]\ndp = "two"\n'))
    assert "[grid] dp: expected an integer, got 'two'" in msg
    assert "expected true or false" in error_of(write(tmp_path, "[runtime]\nverbose = 1\n"))
    assert "expected an integer, got True" in error_of(write(tmp_path, "[grid]\ndp = true\n"))


def test_out_of_range_and_choices(tmp_path):
    assert "[grid] pp: 0 is below the minimum 1" in error_of(write(tmp_path, "[grid]\npp = 0\n"))
    assert "[grid] tp: 0 is below the minimum 1" in error_of(write(tmp_path, "[grid]\ntp = 0\n"))
    assert "above the maximum 1" in error_of(write(tmp_path, "[train]\nmomentum = 1.5\n"))
    msg = error_of(write(tmp_path, '[comm]\nalgorithm = "tree"\n'))
    assert "'tree' is not one of 'shm', 'ring', 'mpi', 'auto'" in msg


def test_cross_field_checks(tmp_path):
    assert "cuts has 0 entries but pp = 2" in error_of(
        write(tmp_path, '[grid]\npp = 2\n[pipeline]\npartition = "cuts"\n'))
    assert "fewer than the 4 stages" in error_of(
        write(tmp_path, "[grid]\npp = 4\n[pipeline]\nmicrobatches = 2\n"))


def test_syntax_missing_file_and_bad_override(tmp_path):
    assert "invalid TOML" in error_of(write(tmp_path, "[grid\n"))
    assert "job file not found" in error_of(tmp_path / "nope.toml")
    assert "expected SECTION.KEY=VALUE" in error_of(None, ["dp=2"])
    assert "--set grid.dp=x" in error_of(None, ["grid.dp=x"])
    assert parse_override("data.dir=/some/path") == ("data", "dir", "/some/path")


def test_plan_reports_bad_key_in_one_line_exit_2(tmp_path):
    path = write(tmp_path, "[grid]\ndpp = 2\n")
    result = run_py(["-m", "mpitrain", "plan", path], timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"mpitrain: error: {path}: [grid] dpp: unknown key 'dpp' in [grid]; did you mean 'dp' or 'pp'?"]


def test_grid_not_matching_world_size_under_mpiexec(tmp_path):
    path = write(tmp_path, "[grid]\ndp = 2\npp = 2\n")
    result = run_mpi(3, ["-m", "mpitrain", "selfcheck", path], timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # one rank speaks
    assert "dp*pp*tp = 2*2*1 = 4 but the job has 3 ranks" in lines[0]
    assert "mpirun -n 4" in lines[0]


def test_plan_world_size_mismatch(tmp_path):
    path = write(tmp_path, "[grid]\ndp = 2\n")
    result = run_py(["-m", "mpitrain", "plan", path, "--world-size", "4"], timeout=60)
    assert result.returncode == 2 and "but the job has 4 ranks" in result.stderr


def test_plan_prints_groups(tmp_path):
    result = run_py(["-m", "mpitrain", "plan", "jobs/selfcheck.toml", "--set", "grid.dp=4",
                     "-n", "8", "--ranks-per-node", "4", "--gpus-per-node", "2"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert "8 ranks = dp 4 x pp 2 x tp 1, 2 node(s) x 4 ranks" in result.stdout
    assert "  0: ranks [0, 1, 2, 3]" in result.stdout and "  3: ranks [3, 7]" in result.stdout
    assert "   5    1   1   0     1     1  cuda:1" in result.stdout


def test_plan_shows_each_stage_layers_and_parameters():
    result = run_py(["-m", "mpitrain", "plan", "jobs/bert_ner_wikiann.toml", "--set", "grid.pp=2",
                     "--set", 'pipeline.partition="parameters"', "-n", "2"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "6 encoder layers, hidden 384, 7 labels, 22,568,071 parameters" in result.stdout
    assert "8 layers -> 2 stages" in result.stdout
    rows = [l.split() for l in result.stdout.splitlines() if l.strip().startswith(("0  ", "1  "))][-2:]
    assert int(rows[0][-1]) + int(rows[1][-1]) == 22_568_071


def test_plan_profile_shows_measured_times():
    result = run_py(["-m", "mpitrain", "plan", "mpitrain/jobs/default.toml", "--set", 'pipeline.partition="profile"'],
                    timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pipeline partition (profile): 4 layers -> 2 stages" in result.stdout
    assert "fwd+bwd ms" in result.stdout


def test_keys_lists_generic_and_the_jobs_task_keys():
    gpt = run_py(["-m", "mpitrain", "keys", "jobs/gpt_tiny.toml"], timeout=60)
    assert gpt.returncode == 0, gpt.stderr
    assert "# task: gpt" in gpt.stdout and "[train]" in gpt.stdout and "block_size" in gpt.stdout
    assert "label_all_subtokens" not in gpt.stdout
    spirals = run_py(["-m", "mpitrain", "keys", "examples/spirals/job.toml"], timeout=60)
    assert spirals.returncode == 0, spirals.stderr
    assert "arms = 3" in spirals.stdout and "[grid]" in spirals.stdout
    ner = run_py(["-m", "mpitrain", "keys"], timeout=60)
    assert "# task: ner" in ner.stdout and "label_all_subtokens" in ner.stdout
