"""The time from the time-limit warning to the requeued job training again from a
verified checkpoint, against its parts, on a real Slurm (e.g. the local one:
bash slurm/local-cluster.sh start).

    python benchmarks/slurm_requeue_latency.py [REPS=3]

Each repetition submits the tiny GPT job (pp 2), waits until it trains, sends
SIGUSR2 (`scancel --signal=USR2`) and polls: the checkpoint committed (its
manifest), the job pending again (requeued), running again, and the log saying
it resumed (the checkpoint read and every checksum verified). Prints each part
and the target: total <= save time + one step + 10 s beyond Slurm's own delay
(pending -> running)."""
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from slurm_helpers import job_info, signal_job, steps_logged, submit, wait_done, wait_for  # noqa: E402

SETS = ["grid.pp=2", "train.epochs=40", "train.log_every=1", "checkpoint.every_epoch=false"]


def one(tmp: Path, prep: Path) -> dict:
    run_dir = tmp / f"run-{time.monotonic_ns()}"
    args = ["jobs/test_tiny_gpt.toml"]
    for s in [f'job.run_dir="{run_dir}"', f'data.prepared_dir="{prep}"', *SETS]:
        args += ["--set", s]
    job = submit(args)
    wait_for(lambda: steps_logged(run_dir) >= 10, 180, "training")
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"step"' in x]
    step_s = 16 * 16 / statistics.median(x["tokens_per_s"] for x in lines[2:])  # global batch x block size
    t0 = time.monotonic()
    signal_job(job)
    marks = {}
    while "resumed" not in marks and time.monotonic() - t0 < 300:
        now = time.monotonic() - t0
        if "committed" not in marks and list((run_dir / "checkpoints").glob("step-*/manifest.json")):
            marks["committed"] = now
        state = job_info(job).get("JobState")
        if "pending" not in marks and state == "PENDING":
            marks["pending"] = now
        if "pending" in marks and "running" not in marks and state == "RUNNING":
            marks["running"] = now
        log = "".join(p.read_text() for p in run_dir.glob("slurm-*.out"))
        if re.search(r"resumed from \S+ at step", log):
            marks["resumed"] = now
        time.sleep(0.05)
    subprocess.run(["scancel", job], timeout=30)
    wait_done(job)
    marks["step_s"] = step_s
    marks["slurm_delay"] = marks["running"] - marks["pending"]
    marks["beyond_slurm"] = marks["resumed"] - marks["slurm_delay"]
    return marks


def main(reps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one(Path(tmp), Path(tmp) / "prep") for _ in range(reps)]
    print(f"{'':<28}" + "".join(f"{'rep ' + str(i + 1):>9}" for i in range(reps)))
    for key, label in (("committed", "checkpoint committed"), ("pending", "job requeued (pending)"),
                       ("running", "running again"), ("resumed", "resumed, checkpoint verified"),
                       ("slurm_delay", "Slurm's delay (pending->run)"), ("beyond_slurm", "total - Slurm's delay"),
                       ("step_s", "one step")):
        print(f"{label:<28}" + "".join(f"{r[key]:>8.2f}s" for r in rows))
    worst = max(r["beyond_slurm"] - r["committed"] for r in rows)  # committed = waiting for the step + save
    print(f"target: total - Slurm's delay <= save + one step + 10 s; worst margin used: {worst:.2f} s of 10 s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
