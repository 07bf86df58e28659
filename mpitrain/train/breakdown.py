"""The step-time breakdown written with every logged step: per rank, the mean
seconds per step of each part (`mpitrain.timing.PARTS`) over the logging
window; the maximum over ranks of each part and the rank it came from (the
straggler)."""
from __future__ import annotations

from ..timing import PARTS, TIMER, step_parts


class Breakdown:
    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums, self.steps, self.seconds = [0.0] * len(PARTS), 0, 0.0

    def add_step(self, step_seconds: float) -> None:
        """Close one step: what `TIMER` counted since the last step, and its wall time."""
        for i, v in enumerate(step_parts(TIMER.take(), step_seconds)):
            self.sums[i] += v
        self.steps += 1
        self.seconds += step_seconds

    def gather(self, world) -> dict | None:
        """Every rank's means per step, on world rank 0 (None elsewhere); starts a new
        window. Collective."""
        n = max(1, self.steps)
        mine = ([v / n for v in self.sums], self.seconds / n)
        self.reset()
        ranks = world.gather(mine, root=0)
        if world.Get_rank() != 0:
            return None
        per_rank = [[round(v, 6) for v in parts] for parts, _ in ranks]
        top = [max(range(len(per_rank)), key=lambda r: per_rank[r][i]) for i in range(len(PARTS))]
        return {"parts": list(PARTS), "ranks": per_rank, "max": [per_rank[r][i] for i, r in enumerate(top)],
                "straggler": top, "step_s": round(max(s for _, s in ranks), 6)}


def summary(breakdown: dict) -> str:
    """'compute 61% (rank 3), pipeline wait 22% (rank 0), ...' of the largest parts."""
    total = breakdown["step_s"] or 1.0
    items = sorted(zip(breakdown["parts"], breakdown["max"], breakdown["straggler"]), key=lambda x: -x[1])
    return ", ".join(f"{p.replace('_', ' ')} {v / total:.0%} (rank {r})" for p, v, r in items[:4] if v > 0)
