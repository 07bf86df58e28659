"""`python -m mpitrain report RUN_DIR`: PNG plots and a text summary of a run
directory (metrics.jsonl, eval_*.json, trace.json). Needs matplotlib (the
`report` extra); nothing else of mpitrain imports this package."""
from __future__ import annotations

from pathlib import Path

from .reader import load_run


def write_report(run_dir, out=None) -> tuple[list[str], list[Path]]:
    """Write the plots of `run_dir` into `out` (RUN_DIR/report by default);
    the summary lines and the files written."""
    from .breakdown import step_breakdown
    from .plots import dev_metric, loss_lr, throughput
    from .summary import summary
    from .timeline import parse, timeline

    run = load_run(run_dir)
    out = Path(out) if out is not None else run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    tl = parse(run.trace) if run.trace is not None else None
    labels = {p: name.replace(" (", "\n(", 1) for p, name in tl.labels.items()} if tl else None  # rank coordinates
    plots = [("loss_lr.png", lambda p: loss_lr(run, p)), ("dev_metric.png", lambda p: dev_metric(run, p)),
             ("throughput.png", lambda p: throughput(run, p)),
             ("step_breakdown.png", lambda p: step_breakdown(run, p, labels)),
             ("timeline.png", lambda p: timeline(run, p, tl))]
    written, skipped = [], []
    for name, plot in plots:
        why = plot(out / name)
        if why is None:
            written.append(out / name)
        else:
            skipped.append((name, why))
            (out / name).unlink(missing_ok=True)  # no stale plot from an earlier report
    return summary(run, written, skipped, out, tl), written
