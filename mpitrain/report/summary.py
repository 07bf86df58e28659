"""The report's text: what the run did, how well, how fast, where its step time went."""
from __future__ import annotations

from .breakdown import OVERLAPPED, last_breakdown
from .reader import best_dev, number
from .style import PART_NAMES, seconds


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def summary(run, written, skipped, out, tl=None) -> list[str]:
    lines = [f"run {run.path}" + (f" ({run.name}, task {run.task})" if run.name else "")]
    last = run.steps[-1] if run.steps else None
    steps = f"{len(run.steps)} step lines, last at step {last['step']}" if last else "no step lines"
    lines.append(f"  steps: {steps}; epochs: {len(run.epochs)} finished"
                 + (f"; resumed {run.restarts} time(s) (repeated steps: last line kept)" if run.restarts else ""))
    losses = [(s["step"], s["loss"]) for s in run.steps if number(s.get("loss")) is not None]
    if losses:
        lines.append(f"  final train loss {losses[-1][1]:.4g} (step {losses[-1][0]})")
    elif run.epochs and number(run.epochs[-1].get("train_loss")) is not None:
        lines.append(f"  final train loss {run.epochs[-1]['train_loss']:.4g} (epoch {run.epochs[-1]['epoch']})")
    best = best_dev(run)
    if best:
        name, value, epoch = best
        others = {k: v for k, v in dict(run.dev()).get(epoch, {}).items() if k != name}
        lines.append(f"  best dev {name} {value:.4g} at epoch {epoch}" + (f" ({_fmt(others)})" if others else ""))
    else:
        lines.append("  dev: no dev metrics")
    lines.append(f"  test: {_fmt(run.test_eval)}" if run.test_eval else "  test: no eval_test.json")
    rates = [s["tokens_per_s"] for s in run.steps if number(s.get("tokens_per_s")) is not None]
    erates = [e["tokens_per_s"] for e in run.epochs if number(e.get("tokens_per_s")) is not None]
    if rates or erates:
        parts = [f"{sum(rates) / len(rates):,.0f} tokens/s over {len(rates)} logging windows"] if rates else []
        parts += [f"{sum(erates) / len(erates):,.0f} tokens/s per epoch"] if erates else []
        lines.append("  mean throughput: " + "; ".join(parts))
    lines += _breakdown(run)
    if tl is not None:
        wait = {p: tl.waiting(p) for p in tl.windows}
        most = max(wait, key=wait.get)
        which = f"{tl.traced_steps} step(s) traced, timeline of step {tl.step}" if tl.step is not None else \
            "no step spans, timeline of the whole trace"
        lines.append(f"  trace: {which} on {len(wait)} ranks; waiting (no data/compute/optimizer work) "
                     f"{min(wait.values()):.0%}..{max(wait.values()):.0%} of the step, most on "
                     f"{tl.labels.get(most, f'rank {most}')}")
    lines += [f"  note: {n}" for n in run.notes]
    lines.append(f"wrote {len(written)} plot(s) to {out}: " + (", ".join(p.name for p in written) or "none"))
    lines += [f"  skipped {name}: {why}" for name, why in skipped]
    return lines


def _breakdown(run) -> list[str]:
    bd = last_breakdown(run.steps)
    if bd is None:
        return ["  step time: no breakdown logged"]
    n = len(bd.ranks)
    unit = "ms"
    out = [f"  step time (step {bd.step}, mean over its logging window, {n} rank(s)): {seconds(bd.step_s, unit)} "
           f"per step",
           f"    {'part':<32}{'% of step':>10}{'max over ranks':>16}  straggler"]
    for i, part in enumerate(bd.parts):
        mean = sum(r[i] for r in bd.ranks) / n
        pct = 100 * mean / bd.step_s if bd.step_s > 0 else 0.0
        name = PART_NAMES.get(part, part) + (" *" if part in OVERLAPPED else "")
        who = f"rank {bd.straggler[i]}" if bd.max[i] > 0 else "-"
        out.append(f"    {name:<32}{pct:>9.1f}%{seconds(bd.max[i], unit):>15}  {who}")
    slow = bd.slowest()
    out.append("    (* overlaps compute, not part of the step's wall time; % = mean over ranks / step time)")
    if n > 1:
        out.append(f"  straggler: rank {slow} (busiest: data + compute + optimizer {seconds(bd.busy(slow), unit)} "
                   f"of {seconds(bd.step_s, unit)}; the other ranks wait for it)")
    return out
