"""Read a run directory: metrics.jsonl (step and epoch lines), eval_dev.json,
eval_test.json, trace.json and run.json. Unknown fields are kept but unused;
a resumed run's repeated steps and epochs keep their last line."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError

LOWER_IS_BETTER = ("loss", "perplexity", "error", "wer", "cer")


def number(value) -> float | None:
    """`value` as a finite float, or None (bools, strings, null, NaN are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def numbers(d) -> dict[str, float]:
    """The top-level numeric entries of a dict (nested dicts such as per_type are left out)."""
    if not isinstance(d, dict):
        return {}
    return {k: number(v) for k, v in d.items() if number(v) is not None}


@dataclass
class Run:
    path: Path
    name: str = ""
    task: str = ""
    steps: list = field(default_factory=list)     # step lines, last of each step, by step
    epochs: list = field(default_factory=list)    # epoch lines, last of each epoch, by epoch
    dev_eval: dict = field(default_factory=dict)  # numbers of eval_dev.json
    test_eval: dict = field(default_factory=dict)  # numbers of eval_test.json
    trace: dict | None = None
    notes: list = field(default_factory=list)     # things the summary should mention
    restarts: int = 0                              # times the step count went back (resumed runs)

    def dev(self) -> list[tuple[int, dict]]:
        """(epoch, numeric dev metrics) of the epochs that evaluated on dev."""
        return [(e["epoch"], numbers(e.get("dev"))) for e in self.epochs if numbers(e.get("dev"))]


def _json(path: Path, run: Run):
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        run.notes.append(f"{path.name} unreadable ({type(e).__name__}), left out")
        return None


def load_run(path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"report: run directory {path} does not exist; pass the run_dir of a training run "
                         f"(job.run_dir in its job file, runs/JOB_NAME by default)")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise UsageError(f"report: {path} has no metrics.jsonl, so it is not a run directory (or its run has not "
                         f"logged yet); pass the run_dir a training run wrote (job.run_dir in its job file)")
    run = Run(path)
    steps, epochs, bad, last_step = {}, {}, 0, None
    lines = metrics.read_text(encoding="utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad += i < len(lines) - 1  # a last line half written by a running job is no news
            continue
        if not isinstance(obj, dict):
            bad += 1
            continue
        if obj.get("event") == "step" and number(obj.get("step")) is not None:
            step = int(obj["step"])
            if last_step is not None and step <= last_step:
                run.restarts += 1
            last_step = step
            steps.pop(step, None)
            steps[step] = obj
        elif obj.get("event") == "epoch" and number(obj.get("epoch")) is not None:
            epochs[int(obj["epoch"])] = {**obj, "epoch": int(obj["epoch"])}
    run.steps = [steps[k] for k in sorted(steps)]
    run.epochs = [epochs[k] for k in sorted(epochs)]
    if bad:
        run.notes.append(f"{bad} unreadable line(s) of metrics.jsonl skipped")
    run.dev_eval = numbers(_json(path / "eval_dev.json", run))
    run.test_eval = numbers(_json(path / "eval_test.json", run))
    trace = _json(path / "trace.json", run)
    run.trace = {"traceEvents": trace} if isinstance(trace, list) else trace if isinstance(trace, dict) else None
    info = _json(path / "run.json", run)
    job = info.get("job", {}).get("job", {}) if isinstance(info, dict) else {}
    run.name, run.task = str(job.get("name", "")), str(job.get("task", ""))
    return run


def primary_metric(names) -> str | None:
    """The dev metric a run is judged by: f1, else perplexity, else loss, else the first."""
    names = list(names)
    for preferred in ("f1", "perplexity", "loss", "accuracy"):
        if preferred in names:
            return preferred
    return names[0] if names else None


def lower_is_better(name: str) -> bool:
    return any(word in name.lower() for word in LOWER_IS_BETTER)


def best_dev(run: Run):
    """(metric, value, epoch) of the best dev epoch by the primary metric, or None."""
    dev = run.dev()
    name = primary_metric(k for _, m in dev for k in m)
    scored = [(m[name], epoch) for epoch, m in dev if name in m]
    if not scored:
        return None
    value, epoch = (min if lower_is_better(name) else max)(scored, key=lambda x: x[0])
    return name, value, epoch
