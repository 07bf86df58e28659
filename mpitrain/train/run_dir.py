"""Which run directory a run uses.

A run records its job in RUN_DIR/run.json (the settings that define what is
trained: task, seed, the task's sections and [train]; not the layout, which
may change between a run and its resumption) and marks it finished at the end.

* an empty or new directory is used;
* the same job, unfinished, is continued in its own directory (a requeued
  Slurm job finds its checkpoints by running the same command again), unless
  `checkpoint.resume = "never"`;
* the same job, finished, is never overwritten: the next free RUN_DIR-2,
  RUN_DIR-3, ... is used;
* a directory holding another job's run is refused with an error naming the
  first setting that differs.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

RUN_FILE = "run.json"
LAYOUT_SECTIONS = ("grid", "runtime", "comm", "pipeline", "checkpoint", "slurm")
FREE_KEYS = {("job", "run_dir"), ("train", "log_every")}


def identity(cfg) -> dict:
    """What makes two runs the same job."""
    out = {}
    for section, values in cfg.to_dict().items():
        if section in LAYOUT_SECTIONS:
            continue
        out[section] = {k: v for k, v in values.items() if (section, k) not in FREE_KEYS}
    return out


def first_difference(a: dict, b: dict) -> str:
    for section in sorted(set(a) | set(b)):
        x, y = a.get(section, {}), b.get(section, {})
        for key in sorted(set(x) | set(y)):
            if x.get(key) != y.get(key):
                return f"[{section}] {key} = {y.get(key)!r} there, {x.get(key)!r} here"
    return "none"


def read_run(path: Path) -> dict | None:
    try:
        return json.loads((path / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_run(path: Path, job: dict, status: str, **extra) -> None:
    tmp = path / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps({"job": job, "status": status, **extra}, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path / RUN_FILE)


def has_results(path: Path) -> bool:
    return (path / "metrics.jsonl").exists() or (path / "model").exists()


def choose_run_dir(cfg, resume: bool, requeued: bool = False) -> tuple[str, str]:
    """(run directory, "new" | "resume" | "finished"), without touching anything:
    the Trainer creates a new one (`create_run_dir`) only once its start has
    succeeded, so a failed start leaves no directory behind and changes none.
    "finished": a requeued Slurm job whose run already ended (it must not run
    again). Run on one rank."""
    base, job = Path(cfg.run_dir), identity(cfg)
    n = 1
    while True:
        path = base if n == 1 else Path(f"{base}-{n}")
        run = read_run(path)
        if run is None and not has_results(path):
            return str(path), "new"
        if run is not None and run.get("job") != job and n == 1:
            raise ConfigError(f"{cfg.source}: run directory {path} holds another job's run (first difference: "
                              f"{first_difference(job, run.get('job') or {})}); set [job] run_dir or name to "
                              f"a new directory, or move {path} away")
        if run is not None and run.get("job") == job and run.get("status") == "finished" and requeued:
            return str(path), "finished"
        if run is not None and run.get("job") == job and run.get("status") != "finished" and resume:
            return str(path), "resume"
        n += 1


def create_run_dir(path: str | Path, cfg) -> None:
    """Create the run directory `choose_run_dir` found free and record the job as
    running; refused if another run took it in the meantime. Run on one rank."""
    path = Path(path)
    if read_run(path) is not None or has_results(path):
        raise ConfigError(f"{cfg.source}: run directory {path} was taken by another run while this one "
                          "started; start again (it then picks the next free directory)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_run(path, identity(cfg), "running")
    except OSError as e:
        raise ConfigError(f"{cfg.source}: cannot create run directory {path} ({e.strerror}); set [job] "
                          "run_dir to a writable place") from None


def count_time_requeue(path: str | Path, cap: int) -> bool:
    """Record one more requeue for the time limit if fewer than `cap` were made."""
    run = read_run(Path(path)) or {}
    done = int(run.get("time_requeues", 0))
    if done >= cap:
        return False
    write_run(Path(path), run.get("job"), run.get("status", "running"), time_requeues=done + 1)
    return True


def mark_finished(path: str | Path, cfg) -> None:
    run = read_run(Path(path)) or {}
    write_run(Path(path), identity(cfg), "finished", time_requeues=run.get("time_requeues", 0))
