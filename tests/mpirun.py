"""Launch `mpiexec -n K python ...` from tests, always with a timeout."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def mpiexec_path() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise RuntimeError("no mpiexec on PATH: pip install mpich (or load your MPI module)")
    return found


def run_mpi(n: int, args, timeout: float = 120, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run `mpiexec -n n python ARGS...`; raises subprocess.TimeoutExpired on a hang
    (after killing the whole process group)."""
    cmd = [mpiexec_path(), "-n", str(n), sys.executable] + [str(a) for a in args]
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=cwd or ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_py(args, timeout: float = 120, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run `python ARGS...` (a single rank, no mpiexec) with a timeout."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable] + [str(a) for a in args], capture_output=True,
                          text=True, env=full_env, cwd=cwd or ROOT, timeout=timeout)
