"""Where a rank's time goes: seconds per category, always kept (a few
perf_counter calls per micro-batch), and while tracing every span as an event.

Categories, as the step-time breakdown reports them (`PARTS`):

    data           building the micro-batches (and agreeing on their size)
    compute        forward and backward, without the tensor-parallel communication in them
    dp_exposed     waiting for the gradient all-reduce after backward (not hidden)
    dp_hidden      the gradient all-reduce's time in flight while backward went on
    tp             tensor-parallel all-reduces and all-gathers (inside forward/backward)
    pipeline_wait  waiting on pipeline sends and receives (the bubble and the transfers)
    optimizer      clipping, the non-finite check, the optimizer and schedule step
    other          the rest of the step (logging, checkpoint polls, ...)

Engine code wraps its work in `TIMER.span(category, name)`; the epoch loop
reads the totals per step with `take()`. Spans nest (a tensor-parallel
all-reduce inside a forward), so `compute` is reported net of `tp`.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

PARTS = ("data", "compute", "dp_exposed", "dp_hidden", "tp", "pipeline_wait", "optimizer", "other")
NAMES = {"data": "data loading", "compute": "compute (forward+backward)", "dp_exposed": "data-parallel comm. (exposed)",
         "dp_hidden": "data-parallel comm. (hidden)", "tp": "tensor-parallel comm.",
         "pipeline_wait": "pipeline wait (bubble)", "optimizer": "optimizer", "other": "other"}


class Timer:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.totals: dict[str, float] = defaultdict(float)  # since the start, never taken (benchmarks)
        self.events: list | None = None   # (name, category, start, duration, thread) while tracing

    @contextmanager
    def span(self, category: str, name: str = "", thread: int = 0):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(category, name, start, time.perf_counter() - start, thread)

    def record(self, category: str, name: str, start: float, seconds: float, thread: int = 0,
               count: bool = True) -> None:
        if count:
            self.add(category, seconds)
        if self.events is not None:
            self.events.append((name or category, category, start, seconds, thread))

    def add(self, category: str, seconds: float) -> None:
        """Count time that is not one span (e.g. communication overlapping compute)."""
        self.seconds[category] += seconds
        self.totals[category] += seconds

    def take(self) -> dict[str, float]:
        """The seconds per category since the last call (and start counting anew)."""
        out = dict(self.seconds)
        self.seconds.clear()
        return out


TIMER = Timer()


def step_parts(seconds: dict[str, float], step_seconds: float) -> list[float]:
    """One step's seconds per `PARTS` entry, from a `take()` and the step's wall
    time; `other` is what the measured parts leave (dp_hidden overlaps compute)."""
    parts = {p: seconds.get(p, 0.0) for p in PARTS}
    parts["compute"] = max(0.0, parts["compute"] - parts["tp"])
    measured = sum(v for p, v in parts.items() if p not in ("other", "dp_hidden"))
    parts["other"] = max(0.0, step_seconds - measured)
    return [parts[p] for p in PARTS]
