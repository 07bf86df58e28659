"""A normal (non-editable) install works: a built wheel in a fresh venv runs
`plan` and the default job on 4 ranks from an unrelated directory, finding its
default job inside the package."""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from mpirun import ROOT, mpiexec_path


def run(cmd, cwd, timeout):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    # the MPI library of the `mpich` wheel, for mpi4py reached from the fresh venv
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(Path(sys.prefix) / "lib"),
                                                           env.get("LD_LIBRARY_PATH")]))
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_wheel_install_runs_plan_and_the_default_job(tmp_path):
    wheels = tmp_path / "wheels"
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, ROOT],
                cwd=tmp_path, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(wheels.glob("mpitrain-*.whl"))
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", venv], cwd=tmp_path, timeout=120).returncode == 0
    python = venv / "bin" / "python"
    # dependencies come from the test environment's site-packages (not its editable mpitrain)
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp_path, timeout=60).stdout.strip())
    (site / "test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = run([python, "-m", "pip", "install", "-q", "--no-deps", wheel], cwd=tmp_path, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    where = tmp_path / "elsewhere"
    where.mkdir()
    found = run([python, "-c", "import mpitrain; print(mpitrain.__file__)"], cwd=where, timeout=60)
    assert found.stdout.startswith(str(venv)), found.stdout + found.stderr
    plan = run([python, "-m", "mpitrain", "plan"], cwd=where, timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert "dp 2 x pp 2" in plan.stdout and "BERT token classifier" in plan.stdout
    job = run([mpiexec_path(), "-n", "4", python, "-m", "mpitrain", "--set", "train.epochs=1",
               "--set", "data.synthetic_train=256", "--set", "data.synthetic_dev=64", "--set", "data.synthetic_test=64"],
              cwd=where, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    assert (where / "runs" / "default" / "model" / "config.json").is_file()
    assert (where / "runs" / "default" / "eval_test.json").is_file()
