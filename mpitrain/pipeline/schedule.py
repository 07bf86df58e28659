"""Pipeline schedules as plain data.

A schedule is a pure function ``(num_stages, num_microbatches) -> list[list[Action]]``:
for each stage, the ordered actions it performs in one optimizer step.

Actions:

    forward(i)     run the stage's layers on micro-batch i (and the loss, on the last stage)
    backward(i)    backpropagate micro-batch i through the stage
    send_act(i)    send micro-batch i's output activations to the next stage
    recv_act(i)    receive micro-batch i's input activations from the previous stage
    send_grad(i)   send the gradient of micro-batch i's inputs to the previous stage
    recv_grad(i)   receive the gradient of micro-batch i's outputs from the next stage

Communication rule (shared by the engine and the simulator): a maximal run of
consecutive send/recv actions is one *exchange*; all its messages are posted
together (non-blocking) and the exchange completes when its receives have (the
simulator, stricter, also waits for its sends). In
1F1B's steady state this pairs "send activation forward" with "receive gradient
backward" (and "send gradient backward" with "receive the next activation"), so
neighbouring stages never wait on each other in a cycle. `simulate.replay`
checks that for any schedule.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

FORWARD = "forward"
BACKWARD = "backward"
SEND_ACT = "send_act"
RECV_ACT = "recv_act"
SEND_GRAD = "send_grad"
RECV_GRAD = "recv_grad"

COMPUTE_OPS = (FORWARD, BACKWARD)
COMM_OPS = (SEND_ACT, RECV_ACT, SEND_GRAD, RECV_GRAD)


@dataclass(frozen=True)
class Action:
    op: str
    mb: int

    @property
    def is_comm(self) -> bool:
        return self.op in COMM_OPS

    def __repr__(self) -> str:
        return f"{self.op}({self.mb})"


def check_sizes(num_stages: int, num_microbatches: int, where: str = "pipeline schedule") -> None:
    if not isinstance(num_stages, int) or num_stages < 1:
        raise UsageError(f"{where}: num_stages={num_stages!r} must be a positive integer; "
                         "set pp >= 1")
    if not isinstance(num_microbatches, int) or num_microbatches < num_stages:
        raise UsageError(f"{where}: {num_microbatches!r} micro-batches for {num_stages} stages; "
                         f"use at least as many micro-batches as stages (m >= p = {num_stages})")


def _forward(stage: int, num_stages: int, mb: int) -> list[Action]:
    acts = []
    if stage > 0:
        acts.append(Action(RECV_ACT, mb))
    acts.append(Action(FORWARD, mb))
    if stage < num_stages - 1:
        acts.append(Action(SEND_ACT, mb))
    return acts


def _backward(stage: int, num_stages: int, mb: int) -> list[Action]:
    acts = []
    if stage < num_stages - 1:
        acts.append(Action(RECV_GRAD, mb))
    acts.append(Action(BACKWARD, mb))
    if stage > 0:
        acts.append(Action(SEND_GRAD, mb))
    return acts


def gpipe(num_stages: int, num_microbatches: int) -> list[list[Action]]:
    """All forwards, then all backwards (in micro-batch order)."""
    check_sizes(num_stages, num_microbatches, "gpipe schedule")
    plan = []
    for s in range(num_stages):
        acts = []
        for i in range(num_microbatches):
            acts += _forward(s, num_stages, i)
        for i in range(num_microbatches):
            acts += _backward(s, num_stages, i)
        plan.append(acts)
    return plan


def one_f_one_b(num_stages: int, num_microbatches: int) -> list[list[Action]]:
    """Warm-up of (p - 1 - s) forwards, then one forward / one backward, then the
    remaining backwards. Stage s holds at most p - s micro-batches' activations."""
    check_sizes(num_stages, num_microbatches, "1f1b schedule")
    m = num_microbatches
    plan = []
    for s in range(num_stages):
        warmup = min(num_stages - 1 - s, m)
        acts = []
        for i in range(warmup):
            acts += _forward(s, num_stages, i)
        for j in range(m - warmup):
            acts += _forward(s, num_stages, warmup + j)
            acts += _backward(s, num_stages, j)
        for j in range(m - warmup, m):
            acts += _backward(s, num_stages, j)
        plan.append(acts)
    return plan


SCHEDULES = {"gpipe": gpipe, "1f1b": one_f_one_b}


def get_schedule(name: str):
    key = str(name).lower().replace("-", "").replace("_", "")
    aliases = {"gpipe": "gpipe", "1f1b": "1f1b", "onefoneb": "1f1b"}
    if key not in aliases:
        raise UsageError(f"pipeline schedule {name!r} is unknown; use one of: {', '.join(SCHEDULES)}")
    return SCHEDULES[aliases[key]]


def exchanges(actions: list[Action]) -> list[Action | tuple[Action, ...]]:
    """Group a stage's actions: compute actions stay single, each maximal run of
    communication actions becomes one tuple (posted and completed together)."""
    out: list = []
    run: list[Action] = []
    for a in actions:
        if a.is_comm:
            run.append(a)
            continue
        if run:
            out.append(tuple(run))
            run = []
        out.append(a)
    if run:
        out.append(tuple(run))
    return out


def format_schedule(plan: list[list[Action]]) -> str:
    """One line per stage, e.g. ``stage 1: [R0] F0 B0 [S0 R1] ...`` (S/R act, s/r grad)."""
    short = {FORWARD: "F", BACKWARD: "B", SEND_ACT: "S", RECV_ACT: "R", SEND_GRAD: "s", RECV_GRAD: "r"}
    lines = []
    for s, acts in enumerate(plan):
        parts = []
        for item in exchanges(acts):
            if isinstance(item, tuple):
                parts.append("[" + " ".join(f"{short[a.op]}{a.mb}" for a in item) + "]")
            else:
                parts.append(f"{short[item.op]}{item.mb}")
        lines.append(f"stage {s}: " + " ".join(parts))
    return "\n".join(lines)
