"""The metric plots: loss and learning rate, dev metrics, throughput. Each
function writes one PNG and returns None, or returns why it wrote nothing."""
from __future__ import annotations

from .reader import best_dev, lower_is_better, number, primary_metric
from .style import figure, save


def _series(steps, key):
    pairs = [(s["step"], number(s.get(key))) for s in steps]
    return [x for x, y in pairs if y is not None], [y for x, y in pairs if y is not None]


def _epoch_spans(steps) -> list[tuple[int, int, int]]:
    """(epoch, its first and last logged step) in step order."""
    spans = {}
    for s in steps:
        if number(s.get("epoch")) is not None:
            first, _ = spans.get(int(s["epoch"]), (s["step"], s["step"]))
            spans[int(s["epoch"])] = (first, s["step"])
    return sorted(((e, a, b) for e, (a, b) in spans.items()), key=lambda x: x[1])


def _mark_epochs(ax, steps) -> None:
    """Whole steps on the x axis, dotted lines between epochs, their numbers above the plot."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    spans = _epoch_spans(steps)
    for i, (epoch, first, last) in enumerate(spans):
        if i + 1 < len(spans):
            ax.axvline((last + spans[i + 1][1]) / 2, color="0.6", lw=0.8, ls=":", zorder=0)
        ax.text((first + last) / 2, 1.01, f"epoch {epoch}", transform=ax.get_xaxis_transform(), fontsize=7,
                color="0.4", va="bottom", ha="center")


def loss_lr(run, path):
    x, loss = _series(run.steps, "loss")
    if not x:
        return "no step lines with a loss in metrics.jsonl (train.log_every larger than the run?)"
    fig, (ax,) = figure()
    marker = "o" if len(x) <= 40 else None
    ax.plot(x, loss, color="#1f77b4", marker=marker, ms=3, lw=1.5, label="training loss (logging-window mean)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss", color="#1f77b4")
    ax.tick_params(axis="y", colors="#1f77b4")
    ax.grid(alpha=0.3)
    _mark_epochs(ax, run.steps)
    handles = ax.get_lines()[:1]
    lx, lr = _series(run.steps, "lr")
    if lx:
        ax2 = ax.twinx()
        handles += ax2.plot(lx, lr, color="#ff7f0e", ls="--", lw=1.5, label="learning rate")
        ax2.set_ylabel("learning rate", color="#ff7f0e")
        ax2.tick_params(axis="y", colors="#ff7f0e")
        ax2.yaxis.set_major_formatter(_formatter("{:.1e}" if max(lr) < 0.01 else "{:.3g}"))
        ax2.set_ylim(bottom=0)
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.set_title(f"Training loss and learning rate{_name(run)}", pad=14)
    save(fig, path)


def _name(run) -> str:
    return f" — {run.name}" if run.name else ""


def _panels(names, unit) -> list[list[str]]:
    """Dev metrics grouped by scale: scores in [0, 1] (`unit`) together, then loss, perplexity,
    the rest alone (4 panels at most)."""
    scores = [n for n in names if n in unit and not lower_is_better(n)]
    rest = [n for n in names if n not in scores]
    rest.sort(key=lambda n: (n not in ("loss", "perplexity"), n != "loss"))
    panels = ([scores] if scores else []) + [[n] for n in rest]
    return panels[:4]


def dev_metric(run, path):
    dev = run.dev()
    if not dev:
        return "no epoch with dev metrics in metrics.jsonl"
    names = list(dict.fromkeys(k for _, m in dev for k in m))
    unit = {n for n in names if all(0 <= m[n] <= 1 for _, m in dev if n in m)}
    panels = _panels(names, unit)
    fig, axes = figure(len(panels))
    best = best_dev(run)
    primary = primary_metric(names)
    for ax, group in zip(axes, panels):
        for n in group:
            xs = [e for e, m in dev if n in m]
            ys = [m[n] for e, m in dev if n in m]
            strong = n == primary
            ax.plot(xs, ys, marker="o", lw=2.2 if strong else 1.2, ms=5 if strong else 3, label=f"dev {n}",
                    alpha=1.0 if strong else 0.8)
            if n in run.test_eval:
                ax.axhline(run.test_eval[n], ls="--", lw=1, color=ax.get_lines()[-1].get_color(),
                           label=f"test {n} (final)")
        if group == ["loss"]:
            tx = [e["epoch"] for e in run.epochs if number(e.get("train_loss")) is not None]
            ty = [e["train_loss"] for e in run.epochs if number(e.get("train_loss")) is not None]
            if tx:
                ax.plot(tx, ty, marker="s", ms=3, lw=1, ls=":", color="0.4", label="train loss")
        if best and best[0] in group:
            ax.plot([best[2]], [best[1]], marker="*", ms=15, color="gold", mec="k", ls="", zorder=5,
                    label=f"best {best[0]} {best[1]:.4g} (epoch {best[2]})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("score (0–1)" if group[0] in unit and not lower_is_better(group[0]) else group[0])
        ax.set_xticks(sorted({e for e, _ in dev} | {e["epoch"] for e in run.epochs}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Dev metrics per epoch{_name(run)}")
    save(fig, path)


def throughput(run, path):
    x, rate = _series(run.steps, "tokens_per_s")
    ep = [(e["epoch"], number(e.get("tokens_per_s"))) for e in run.epochs]
    ep = [(e, r) for e, r in ep if r is not None]
    if not x and not ep:
        return "no tokens_per_s in metrics.jsonl"
    panels = (["steps"] if x else []) + (["epochs"] if ep else [])
    fig, axes = figure(len(panels), width_ratios=[3, 1] if len(panels) == 2 else None)
    for ax, what in zip(axes, panels):
        ax.grid(alpha=0.3)
        ax.yaxis.set_major_formatter(_formatter("{:,.0f}"))
        ax.set_ylabel("throughput (tokens/s)")
        if what == "steps":
            ax.plot(x, rate, marker="o" if len(x) <= 40 else None, ms=3, color="#2ca02c",
                    label="per logging window")
            mean = sum(rate) / len(rate)
            ax.axhline(mean, ls="--", color="0.3", lw=1, label=f"mean {mean:,.0f} tokens/s")
            ax.set_xlabel("optimizer step")
            ax.set_ylim(bottom=0)
            _mark_epochs(ax, run.steps)
            ax.legend(fontsize=8, loc="lower right")
            ax.set_title("per logged step", fontsize=10, pad=14)
        else:
            bars = ax.bar([str(e) for e, _ in ep], [r for _, r in ep], color="#98df8a", edgecolor="#2ca02c")
            ax.bar_label(bars, labels=[f"{r:,.0f}" for _, r in ep], fontsize=7, padding=2)
            ax.set_xlabel("epoch")
            ax.set_ylim(0, max(r for _, r in ep) * 1.15)
            ax.set_title("per epoch", fontsize=10)
    fig.suptitle(f"Training throughput{_name(run)}")
    save(fig, path)


def _formatter(fmt: str):
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: fmt.format(v))
