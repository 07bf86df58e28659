"""The fault-injection suite: SIGKILL or SIGSTOP a random rank at a random moment
of training and check that the job ends on its own, soon, and leaves only
loadable checkpoints.

    python benchmarks/faults.py [--trials 24] [--seed 0] [--stall 10] [--json out.json]

Each trial starts the tiny GPT job (`jobs/test_tiny_gpt.toml`, 4 heads so tp
divides) under mpiexec on one of the layouts dp 2, pp 2, dp 2 x pp 2 and
dp 1 x tp 2, with a checkpoint every 2 steps and `runtime.stall_timeout`
seconds of patience. `MPITRAIN_FAULT` makes one random rank send itself the
signal the N-th time it reaches a moment valid for the layout: forward,
backward, a gradient all-reduce, a pipeline send/receive, a tensor-parallel
all-reduce, a checkpoint write, the evaluation. Per trial: whether the job
ended by itself within `--timeout` (else it is a hang, killed), the time from
the fault to the end of the job, its exit code, and whether every committed
checkpoint verifies (`mpitrain checkpoint`). Prints a table; exits 1 when any
trial hung, took more than 30 s after the fault, or left an unloadable
checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOB = "jobs/test_tiny_gpt.toml"
LAYOUTS = {  # name: (ranks, grid settings, moments valid for it)
    "dp2": (2, ["grid.dp=2"], ["forward", "backward", "all-reduce", "checkpoint write", "evaluation"]),
    "pp2": (2, ["grid.pp=2"], ["forward", "backward", "pipeline", "checkpoint write", "evaluation"]),
    "dp2xpp2": (4, ["grid.dp=2", "grid.pp=2"], ["forward", "backward", "all-reduce", "pipeline",
                                                 "checkpoint write", "evaluation"]),
    "tp2": (2, ["grid.tp=2"], ["forward", "backward", "allreduce", "checkpoint write", "evaluation"]),
}
LIMIT_AFTER_FAULT = 30.0


def mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else (shutil.which("mpiexec") or "mpiexec")


def trial(tmp: Path, layout: str, moment: str, sig: str, rank: int, nth: int, stall: float, timeout: float) -> dict:
    ranks, grid, _ = LAYOUTS[layout]
    run = tmp / "run"
    sets = [*grid, "model.n_head=4", "data.limit=320", "train.epochs=2", "checkpoint.every_steps=2",
            f"runtime.stall_timeout={stall}", f'job.run_dir="{run}"', f'data.prepared_dir="{tmp.parent}/prep"']
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpitrain", "train", JOB]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, MPITRAIN_FAULT=f"rank={rank},at={moment},nth={nth},signal={sig}", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    hung = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        hung = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    ended = time.time()
    fired = re.search(r"fault injection: .* at (\d+\.\d+)", err)
    result = {"layout": layout, "moment": moment, "signal": sig, "rank": rank, "nth": nth, "hung": hung,
              "code": proc.returncode, "fired": bool(fired),
              "after_fault_s": round(ended - float(fired.group(1)), 1) if fired else None,
              "stall_named": f"rank(s) {rank} reported no wait" in err}
    result["checkpoints"], result["unloadable"] = verify_checkpoints(run / "checkpoints")
    return result


def verify_checkpoints(root: Path) -> tuple[int, int]:
    """(committed checkpoints, those that fail `mpitrain checkpoint`'s verification)."""
    if not root.is_dir():
        return 0, 0
    found = sorted(p for p in root.glob("step-*") if (p / "manifest.json").exists())
    bad = 0
    for path in found:
        check = subprocess.run([sys.executable, "-m", "mpitrain", "checkpoint", str(path)], cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
        bad += check.returncode != 0
    return len(found), bad


def plan(trials: int, seed: int) -> list[tuple]:
    """Trials spread over layouts, moments and both signals; rank and N random."""
    rng = random.Random(seed)
    cases = [(layout, moment, sig) for layout, (_, _, moments) in LAYOUTS.items() for moment in moments
             for sig in ("KILL", "STOP")]
    rng.shuffle(cases)
    out = []
    for i in range(trials):
        layout, moment, sig = cases[i % len(cases)]
        ranks = LAYOUTS[layout][0]
        nth = 1 if moment in ("checkpoint write", "evaluation") else rng.randint(1, 6)
        out.append((layout, moment, sig, rng.randrange(ranks), nth))
    return out


def table(rows: list[dict]) -> str:
    lines = [f"{'layout':<8} {'moment':<17} {'signal':<6} {'rank':>4} {'nth':>3}  {'exit':>4} {'after fault':>11}  "
             f"{'checkpoints':>11} {'unloadable':>10}  note"]
    for r in rows:
        note = "HANG" if r["hung"] else ("fault not reached" if not r["fired"] else
                                        ("culprit named" if r["stall_named"] else ""))
        after = f"{r['after_fault_s']:.1f} s" if r["after_fault_s"] is not None else "-"
        lines.append(f"{r['layout']:<8} {r['moment']:<17} {r['signal']:<6} {r['rank']:>4} {r['nth']:>3}  "
                     f"{str(r['code']):>4} {after:>11}  {r['checkpoints']:>11} {r['unloadable']:>10}  {note}")
    fired = [r for r in rows if r["fired"]]
    slowest = max((r["after_fault_s"] for r in fired), default=0.0)
    lines.append("")
    lines.append(f"trials {len(rows)} (fault reached in {len(fired)}), hangs {sum(r['hung'] for r in rows)}, "
                 f"slowest exit after the fault {slowest:.1f} s, unloadable checkpoints "
                 f"{sum(r['unloadable'] for r in rows)} of {sum(r['checkpoints'] for r in rows)}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stall", type=float, default=10.0, help="runtime.stall_timeout of the trials (s)")
    ap.add_argument("--timeout", type=float, default=120.0, help="a trial still running after this is a hang")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpitrain-faults-") as tmp:
        for i, case in enumerate(plan(args.trials, args.seed)):
            rows.append(trial(Path(tmp) / f"trial-{i}", *case, stall=args.stall, timeout=args.timeout))
            print(f"trial {i + 1}/{args.trials}: {rows[-1]}", flush=True)
    print(table(rows), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    failed = [r for r in rows if r["hung"] or r["unloadable"] or not r["fired"]
              or (r["after_fault_s"] or 0) > LIMIT_AFTER_FAULT]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
