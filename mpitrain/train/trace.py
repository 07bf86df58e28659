"""A merged timeline of a few training steps: every rank records its spans
(`mpitrain.timing`), rank 0 writes them to RUN_DIR/trace.json in Chrome's trace
format (open it in https://ui.perfetto.dev or chrome://tracing), one track
per rank, thread 0 for the rank's own work (data, forward, backward, pipeline
sends and receives, tensor-parallel communication, optimizer) and thread 1 for
its gradient all-reduce buckets in flight, which overlap backward.

Clocks: the ranks leave a barrier just before the first traced step and each
counts time from that moment, so tracks align to the barrier's exit skew (tens
of microseconds on one node; about a network latency across nodes).

`[runtime] trace_steps = N` (or `train --trace`) traces N steps, starting with
the third step of the launch (the first ones warm up).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..timing import TIMER

WARMUP_STEPS = 2


class Tracer:
    def __init__(self, topo, path: Path, steps: int, first_step: int):
        self.topo, self.path, self.steps = topo, Path(path), steps
        self.first, self.last = first_step + WARMUP_STEPS, first_step + WARMUP_STEPS + steps - 1
        self.origin = None
        self.written = False

    def before_step(self, step: int) -> None:
        """Collective at the first traced step (`step`: the optimizer step about to run, 0-based)."""
        if step == self.first and not self.written:
            self.topo.world.Barrier()
            self.origin = time.perf_counter()
            TIMER.events = []

    def after_step(self, step: int) -> None:
        if step == self.last:
            self.finish()

    def finish(self) -> None:
        """Gather the spans and write the trace (collective; once, if tracing began)."""
        if self.origin is None or self.written:
            return
        events, TIMER.events = TIMER.events or [], None
        self.written = True
        mine = [(name, cat, start - self.origin, dur, thread) for name, cat, start, dur, thread in events
                if start >= self.origin]
        parts = self.topo.world.gather((self.topo.describe(), mine), root=0)
        if self.topo.rank == 0:
            write_trace(self.path, parts)


def write_trace(path: Path, parts: list) -> None:
    """Chrome trace JSON: `parts[rank]` = (description, [(name, category, start s, seconds, thread)])."""
    out = []
    for rank, (describe, events) in enumerate(parts):
        out.append({"ph": "M", "name": "process_name", "pid": rank, "args": {"name": describe}})
        out.append({"ph": "M", "name": "process_sort_index", "pid": rank, "args": {"sort_index": rank}})
        for tid, name in ((0, "main"), (1, "gradient all-reduce")):
            out.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": tid, "args": {"name": name}})
        for name, cat, start, dur, thread in sorted(events, key=lambda e: (e[4], e[2], -e[3])):
            out.append({"name": name, "cat": cat, "ph": "X", "ts": round(start * 1e6, 3),
                        "dur": round(dur * 1e6, 3), "pid": rank, "tid": thread})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"traceEvents": out, "displayTimeUnit": "ms"}))
    tmp.replace(path)
