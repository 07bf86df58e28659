"""One look for every figure: size, resolution, names and colors of the step-time
parts and trace categories (the same color for the same thing in both plots)."""
from __future__ import annotations

FIGSIZE = (8, 4.5)
DPI = 120

# step-time parts (mpitrain.timing.PARTS) as the breakdown names them
PART_NAMES = {"data": "data loading", "compute": "compute (forward+backward)",
              "dp_exposed": "data-parallel comm. (exposed)", "dp_hidden": "data-parallel comm. (hidden)",
              "tp": "tensor-parallel comm.", "pipeline_wait": "pipeline wait (bubble)",
              "optimizer": "optimizer", "other": "other"}
PART_COLORS = {"data": "#8c564b", "compute": "#1f77b4", "dp_exposed": "#d62728", "dp_hidden": "#2ca02c",
               "tp": "#9467bd", "pipeline_wait": "#ff9f40", "optimizer": "#e377c2", "other": "#b0b0b0"}

# trace categories (and forward/backward, told apart by name)
CATEGORY_NAMES = {"data": "data loading", "forward": "forward", "backward": "backward", "compute": "compute",
                  "send": "pipeline send", "recv": "pipeline receive (wait)", "pipeline_wait": "pipeline wait",
                  "allreduce": "gradient all-reduce (in flight)", "dp_exposed": "data-parallel wait (exposed)",
                  "tp": "tensor-parallel comm.", "optimizer": "optimizer", "checkpoint": "checkpoint",
                  "eval": "evaluation"}
CATEGORY_COLORS = {"data": "#8c564b", "forward": "#6baed6", "backward": "#08519c", "compute": "#1f77b4",
                   "send": "#ff7f0e", "recv": "#ffbb78", "pipeline_wait": "#ff9f40", "allreduce": "#2ca02c",
                   "dp_exposed": "#d62728", "tp": "#9467bd", "optimizer": "#e377c2", "checkpoint": "#7f7f7f",
                   "eval": "#bcbd22"}
SPARE_COLORS = ["#17becf", "#dbdb8d", "#c5b0d5", "#f7b6d2", "#9edae5", "#c49c94"]


def color(table: dict, key: str, seen: dict) -> str:
    """`table[key]`, or a spare color kept for an unknown key."""
    if key in table:
        return table[key]
    if key not in seen:
        seen[key] = SPARE_COLORS[len(seen) % len(SPARE_COLORS)]
    return seen[key]


def figure(ncols: int = 1, height: float = FIGSIZE[1], **kw):
    """A figure without pyplot (no global state, no display needed) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIGSIZE[0], height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False, **kw)[0]
    return fig, list(axes)


def save(fig, path) -> None:
    fig.savefig(path, dpi=DPI)


def time_unit(seconds: float) -> tuple[str, float]:
    """("ms", 1000) for times under a second, ("s", 1) for longer ones."""
    return ("ms", 1e3) if seconds < 1 else ("s", 1.0)


def seconds(value: float, unit: str) -> str:
    """`value` seconds in `unit` (from time_unit): "42.5 ms", "1.694 s"."""
    return f"{value * 1e3:.1f} ms" if unit == "ms" else f"{value:.3f} s"
