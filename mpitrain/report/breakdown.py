"""The step-time breakdown of step lines: seconds per part and rank, averaged per
step over a logging window. `dp_hidden` overlaps compute, so it is drawn over
the compute bar, not stacked after it."""
from __future__ import annotations

from dataclasses import dataclass

from .reader import number
from .style import PART_COLORS, PART_NAMES, color, figure, save, seconds, time_unit

BUSY = ("data", "compute", "optimizer")   # a rank's own work; the rest is (mostly) waiting for others
OVERLAPPED = ("dp_hidden",)               # not part of the step's wall time


@dataclass
class Breakdown:
    step: int
    parts: list          # part keys
    ranks: list          # [[seconds per part] per rank]
    step_s: float        # mean step seconds
    max: list            # max over ranks per part
    straggler: list      # rank with that max, per part

    def total(self, rank: int) -> float:
        return sum(v for p, v in zip(self.parts, self.ranks[rank]) if p not in OVERLAPPED)

    def busy(self, rank: int) -> float:
        return sum(v for p, v in zip(self.parts, self.ranks[rank]) if p in BUSY)

    def slowest(self) -> int:
        """The rank with the most busy time: the one the others wait for."""
        return max(range(len(self.ranks)), key=self.busy)


def _valid(bd) -> bool:
    if not isinstance(bd, dict) or not isinstance(bd.get("parts"), list) or not isinstance(bd.get("ranks"), list):
        return False
    n = len(bd["parts"])
    return bool(bd["ranks"]) and all(isinstance(r, list) and len(r) == n and all(number(v) is not None for v in r)
                                     for r in bd["ranks"])


def last_breakdown(steps) -> Breakdown | None:
    """The breakdown of the last step line that has one."""
    for s in reversed(steps):
        bd = s.get("breakdown")
        if not _valid(bd):
            continue
        parts, ranks = [str(p) for p in bd["parts"]], [[float(v) for v in r] for r in bd["ranks"]]
        n = len(parts)
        mx = [max(r[i] for r in ranks) for i in range(n)]
        st = [max(range(len(ranks)), key=lambda k: ranks[k][i]) for i in range(n)]
        if isinstance(bd.get("max"), list) and len(bd["max"]) == n and all(number(v) is not None for v in bd["max"]):
            mx = [float(v) for v in bd["max"]]
        if isinstance(bd.get("straggler"), list) and len(bd["straggler"]) == n and \
                all(isinstance(v, int) and 0 <= v < len(ranks) for v in bd["straggler"]):
            st = list(bd["straggler"])
        out = Breakdown(int(s["step"]), parts, ranks, 0.0, mx, st)
        out.step_s = number(bd.get("step_s")) or max(out.total(r) for r in range(len(ranks)))
        return out
    return None


def step_breakdown(run, path, labels=None):
    bd = last_breakdown(run.steps)
    if bd is None:
        return "no step-time breakdown in metrics.jsonl (a run from before breakdowns were logged)"
    n = len(bd.ranks)
    unit, scale = time_unit(max(bd.step_s, max(bd.total(r) for r in range(n))))
    fig, (ax,) = figure(height=min(20.0, max(4.5, 2.2 + 0.32 * n)))
    seen, slowest = {}, bd.slowest()
    y = list(range(n))
    left = [0.0] * n
    compute_end = [0.0] * n
    for i, part in enumerate(bd.parts):
        if part in OVERLAPPED:
            continue
        shown = any(bd.ranks[r][i] > 0 for r in y)  # a part all ranks spent no time on: no legend entry
        width = [bd.ranks[r][i] * scale for r in y]
        ax.barh(y, width, left=left, height=0.7, color=color(PART_COLORS, part, seen),
                label=PART_NAMES.get(part, part) if shown else None, edgecolor="white", linewidth=0.5)
        left = [a + b for a, b in zip(left, width)]
        if part == "compute":
            compute_end = list(left)
    for i, part in enumerate(bd.parts):
        if part in OVERLAPPED and any(bd.ranks[r][i] > 0 for r in y):
            # in flight while backward ran: drawn over the end of the compute bar
            width = [bd.ranks[r][i] * scale for r in y]
            ax.barh(y, width, left=[max(0.0, e - w) for e, w in zip(compute_end, width)], height=0.28,
                    color=color(PART_COLORS, part, seen), hatch="////", edgecolor="white", linewidth=0.0,
                    label=PART_NAMES.get(part, part) + " — overlaps compute")
    ax.axvline(bd.step_s * scale, color="k", ls="--", lw=1, label=f"mean step time {seconds(bd.step_s, unit)}")
    ax.set_yticks(y, [labels.get(r, f"rank {r}") if labels else f"rank {r}" for r in y],
                  fontsize=8 if n <= 16 else 6)
    if n > 1:  # the rank the others wait for
        ax.get_yticklabels()[slowest].set_color("#d62728")
        ax.get_yticklabels()[slowest].set_fontweight("bold")
        ax.annotate("◀ straggler", (left[slowest], slowest), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8, color="#d62728", fontweight="bold")
    slots = max(n, 3)  # a bar or two stay bars, not walls
    ax.set_ylim((n - 1 + slots) / 2, (n - 1 - slots) / 2)  # rank 0 on top
    ax.set_xlim(0, max(max(left), bd.step_s * scale) * 1.22)
    ax.set_xlabel(f"time per optimizer step ({unit})")
    ax.set_ylabel("world rank")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Step time per rank — step {bd.step}, mean over the logging window{_name(run)}", fontsize=10)
    fig.legend(loc="outside lower center", ncol=3, fontsize=7.5, frameon=False)
    save(fig, path)


def _name(run) -> str:
    return f" ({run.name})" if run.name else ""
