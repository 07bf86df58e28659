"""Plot a run directory -- finished or still running -- and summarise it: writes
loss_lr.png, dev_metric.png, throughput.png, step_breakdown.png (step time per
rank and part) and timeline.png (one traced step, from trace.json) into
RUN_DIR/report, skipping a plot whose input the run lacks, and prints the run's
steps, epochs, losses, best dev and test metrics, throughput and step-time
split. No MPI needed; needs matplotlib (pip install 'mpitrain[report]')."""
from __future__ import annotations

HELP = "plot a run directory's metrics, step-time breakdown and trace, and summarise it"


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (job.run_dir; it holds metrics.jsonl)")
    parser.add_argument("--out", metavar="DIR", help="where to write the PNGs (default RUN_DIR/report)")


def run(args) -> int:
    from ..errors import UsageError

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("report: matplotlib is not installed; pip install 'mpitrain[report]'") from None
    from ..report import write_report

    lines, _ = write_report(args.run_dir, args.out)
    print("\n".join(lines))
    return 0
