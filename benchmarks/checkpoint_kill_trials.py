"""Fault trials: SIGKILL one rank at a random moment of a checkpoint save, then
check that every committed checkpoint still verifies and that running the same
command again resumes and finishes. Prints one line per trial and the totals.

    python benchmarks/checkpoint_kill_trials.py [TRIALS=20] [JOB=jobs/test_tiny_gpt.toml]

(CI runs three of these trials in tests/test_checkpoint_faults.py.)"""
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MPIEXEC = str(Path(PY).parent / "mpiexec")
SETS = ["grid.pp=2", "train.epochs=2", "checkpoint.every_steps=2", "checkpoint.keep=3"]


def args(job, run_dir, prep):
    out = [job, "--set", f'job.run_dir="{run_dir}"', "--set", f'data.prepared_dir="{prep}"']
    for s in SETS:
        out += ["--set", s]
    return out


def main(trials: int, job: str) -> int:
    unloadable = resumed = 0
    with tempfile.TemporaryDirectory() as tmp:
        prep = Path(tmp) / "prep"
        for seed in range(trials):
            run_dir = Path(tmp) / f"run-{seed}"
            killed = subprocess.run([MPIEXEC, "-n", "2", PY, "tests/mpi_scripts/kill_during_save.py", str(seed),
                                     *args(job, run_dir, prep)], cwd=ROOT, capture_output=True, text=True,
                                    timeout=300)
            where = next((l for l in killed.stdout.splitlines() if l.startswith(f"seed {seed}:")), "?")
            root = run_dir / "checkpoints"
            found = sorted(p for p in root.glob("step-*") if (p / "manifest.json").exists())
            bad = [p.name for p in found if subprocess.run([PY, "-m", "mpitrain", "checkpoint", str(p)], cwd=ROOT,
                                                           capture_output=True, timeout=120).returncode != 0]
            again = subprocess.run([MPIEXEC, "-n", "2", PY, "-m", "mpitrain", *args(job, run_dir, prep)], cwd=ROOT,
                                   capture_output=True, text=True, timeout=300)
            ok = again.returncode == 0 and "resumed from" in again.stdout
            unloadable += len(bad)
            resumed += ok
            print(f"{where:<45} exit {killed.returncode:>4}  committed {len(found)}  unloadable {len(bad)}  "
                  f"resumed and finished: {'yes' if ok else 'NO'}", flush=True)
    print(f"{trials} trials: {unloadable} unloadable checkpoints, {resumed}/{trials} runs resumed and finished")
    return 0 if unloadable == 0 and resumed == trials else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20,
                  sys.argv[2] if len(sys.argv) > 2 else "jobs/test_tiny_gpt.toml"))
