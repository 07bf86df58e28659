"""The one metrics sink every task uses: JSON lines in RUN_DIR/metrics.jsonl,
written by world rank 0. Each line has an "event": "step" (every
`train.log_every` steps: step, epoch, loss, lr, grad_norm, tokens_per_s) or
"epoch" (train loss, steps, seconds, tokens_per_s and the dev metrics)."""
from __future__ import annotations

import json
import math
from pathlib import Path


def plain(value):
    """Numbers and strings as JSON accepts them (NaN/inf become null)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return plain(value.item())
    return value


def numbers(metrics: dict | None) -> dict:
    """The scalar entries of a metrics dict (what goes into metrics.jsonl)."""
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MetricsSink:
    def __init__(self, run_dir: str | Path, rank: int):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.active = rank == 0

    def write(self, event: str, **fields) -> None:
        if not self.active:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, **plain(fields)}) + "\n")

    def write_json(self, name: str, obj) -> None:
        """A whole JSON document (e.g. eval_test.json), replaced atomically."""
        if not self.active:
            return
        path = self.path.parent / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(plain(obj), indent=2) + "\n")
        tmp.replace(path)
