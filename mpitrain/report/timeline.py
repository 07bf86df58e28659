"""trace.json (Chrome trace format) as a Gantt chart of one traced step: a row
per rank, its main-thread spans above and its gradient all-reduce in flight
(thread 1, or category "allreduce") below, so that the pipeline bubble (grey:
inside the step, no work) and the all-reduce overlapping backward show."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .reader import number
from .style import CATEGORY_COLORS, CATEGORY_NAMES, color, figure, save

DRAW_ORDER = ["checkpoint", "eval", "data", "compute", "forward", "backward", "optimizer", "pipeline_wait",
              "send", "recv", "dp_exposed", "tp", "allreduce"]
IDLE = "#e8e8e8"
WORK = ("data", "compute", "forward", "backward", "optimizer", "checkpoint", "eval")


@dataclass
class Timeline:
    labels: dict = field(default_factory=dict)    # pid -> "rank 0 (dp=0, pp=0, tp=0)"
    spans: dict = field(default_factory=dict)     # pid -> [(start us, dur us, kind, name, lane)]
    windows: dict = field(default_factory=dict)   # pid -> (start us, end us) of the chosen step
    step: object = None                           # the chosen step's id (None: the whole trace)
    traced_steps: int = 0

    def waiting(self, pid) -> float:
        """Fraction of the rank's step without work (data, compute, optimizer, ...) on its main
        thread: pipeline bubble, receives, exposed all-reduce, gaps."""
        start, end = self.windows[pid]
        busy, cursor = 0.0, start
        for s, d, *_ in sorted(x for x in self.spans[pid] if x[4] == 0 and x[2] in WORK):
            s, e = max(s, cursor), min(s + d, end)
            if e > s:
                busy, cursor = busy + e - s, e
        return 1 - busy / (end - start) if end > start else 0.0


def _kind(cat: str, name: str) -> str:
    if cat == "compute":
        low = name.lower()
        return "forward" if "forward" in low else "backward" if "backward" in low else "compute"
    return cat


def _step_id(ev):
    args = ev.get("args") if isinstance(ev.get("args"), dict) else {}
    if isinstance(args.get("step"), int):
        return args["step"]
    found = re.search(r"\d+", str(ev.get("name", "")))
    return int(found.group()) if found else None


def parse(trace) -> Timeline | None:
    """The last step traced on every rank, or None when the trace has no complete spans."""
    events = trace.get("traceEvents") if isinstance(trace, dict) else None
    if not isinstance(events, list):
        return None
    tl, steps = Timeline(), {}
    for ev in events:
        if not isinstance(ev, dict) or isinstance(ev.get("pid"), bool) or not isinstance(ev.get("pid"), int):
            continue
        pid = ev["pid"]
        if ev.get("ph") == "M" and ev.get("name") == "process_name" and isinstance(ev.get("args"), dict):
            tl.labels[pid] = str(ev["args"].get("name", f"rank {pid}"))
        ts, dur = number(ev.get("ts")), number(ev.get("dur"))
        if ev.get("ph") != "X" or ts is None or dur is None:
            continue
        cat, name = str(ev.get("cat", "other")), str(ev.get("name", ""))
        if cat == "step":
            steps.setdefault(pid, []).append((ts, dur, _step_id(ev)))
            continue
        lane = 1 if ev.get("tid", 0) != 0 or cat == "allreduce" else 0
        tl.spans.setdefault(pid, []).append((ts, dur, _kind(cat, name), name, lane))
    if not tl.spans:
        return None
    pids = sorted(tl.spans)
    if all(p in steps for p in pids):
        by_id = all(i is not None for p in pids for *_, i in steps[p])
        keyed = {p: {(i if by_id else k): (ts, ts + dur) for k, (ts, dur, i) in enumerate(sorted(steps[p]))}
                 for p in pids}
        common = set.intersection(*(set(k) for k in keyed.values()))
        if common:
            tl.step, tl.traced_steps = max(common), len(common)
            tl.windows = {p: keyed[p][tl.step] for p in pids}
    if not tl.windows:  # no step spans: the whole trace
        tl.windows = {p: (min(s for s, *_ in tl.spans[p]), max(s + d for s, d, *_ in tl.spans[p])) for p in pids}
    for p in pids:
        start, end = tl.windows[p]
        tl.spans[p] = [x for x in tl.spans[p] if x[0] < end and x[0] + x[1] > start]
    return tl


def timeline(run, path, tl: Timeline | None):
    if run.trace is None:
        return "no trace.json (trace a few steps with [runtime] trace_steps = N or train --trace)"
    if tl is None:
        return "trace.json has no complete spans"
    pids = sorted(tl.windows)
    t0 = min(s for s, _ in tl.windows.values())
    width = max(e for _, e in tl.windows.values()) - t0
    n = len(pids)
    fig, (ax,) = figure(height=min(20.0, max(4.5, 2.4 + 0.55 * n)))
    seen, present = {}, set()
    ms = 1e-3
    for row, p in enumerate(pids):
        start, end = tl.windows[p]
        ax.broken_barh([((start - t0) * ms, (end - start) * ms)], (row - 0.42, 0.84), facecolor=IDLE,
                       edgecolor="0.6", linewidth=0.6, zorder=1)
        groups = {}
        for s, d, kind, name, lane in tl.spans[p]:
            s, e = max(s, start), min(s + d, end)
            groups.setdefault((kind, lane), []).append(((s - t0) * ms, (e - s) * ms, name))
        for (kind, lane), spans in groups.items():
            present.add(kind)
            rank = DRAW_ORDER.index(kind) if kind in DRAW_ORDER else len(DRAW_ORDER)
            y = (row - 0.36, 0.44) if lane == 0 else (row + 0.12, 0.26)
            ax.broken_barh([(s, d) for s, d, _ in spans], y, facecolor=color(CATEGORY_COLORS, kind, seen),
                           edgecolor="white", linewidth=0.3, zorder=2 + rank * 0.01)
            if kind in ("forward", "backward"):
                for s, d, name in spans:
                    mb = re.search(r"\d+", name)
                    if mb and d > width * ms * 0.022:
                        ax.text(s + d / 2, y[0] + y[1] / 2, ("F" if kind == "forward" else "B") + mb.group(),
                                ha="center", va="center", fontsize=6.5, zorder=3,
                                color="white" if kind == "backward" else "black")
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=IDLE, edgecolor="0.6", label="step (grey: nothing recorded)")]
    handles += [Patch(facecolor=color(CATEGORY_COLORS, k, seen), label=CATEGORY_NAMES.get(k, k))
                for k in sorted(present, key=lambda k: DRAW_ORDER.index(k) if k in DRAW_ORDER else 99)]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=7.5, frameon=False)
    ax.set_yticks(range(n), [tl.labels.get(p, f"rank {p}").replace(" (", "\n(") for p in pids],
                  fontsize=7 if n <= 16 else 5)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(0, width * ms * 1.01)
    ax.set_xlabel("time since the step began (ms)")
    ax.set_ylabel("rank  (upper lane: main thread,\nlower lane: gradient all-reduce)", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    which = f"step {tl.step}" if tl.step is not None else "all traced spans"
    ax.set_title(f"Timeline of {which} on every rank (from trace.json)", fontsize=10)
    save(fig, path)
