"""Replay every stage's action list together: prove a schedule cannot deadlock,
check it is well formed, and measure its bubble for given action costs.

Message model (the strictest MPI allows): a message is delivered only once both
its send and its matching receive are posted, and an exchange (a run of
consecutive send/recv actions, see `schedule`) completes only when all of its
messages are delivered. The engine is more permissive -- it waits only for an
exchange's receives and completes sends lazily -- so a schedule that passes here
cannot deadlock there. Messages between two stages in one direction are matched
in posting order, like MPI's non-overtaking rule for one tag; the simulator
checks that matched messages carry the same micro-batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .schedule import (BACKWARD, FORWARD, RECV_ACT, RECV_GRAD, SEND_ACT, SEND_GRAD, Action,
                       exchanges)


class ScheduleError(ValueError):
    """A schedule that is malformed (wrong order, unmatched or mismatched messages)."""


class DeadlockError(ScheduleError):
    """Every unfinished stage waits on a message that will never be posted."""


@dataclass
class SimResult:
    makespan: float
    busy: list[float]            # compute time per stage
    finish: list[float]          # time each stage finished its last action
    peak_in_flight: list[int]    # most micro-batches forwarded but not yet backwarded, per stage
    timeline: list[list[tuple[float, float, Action]]] = field(default_factory=list)

    @property
    def bubble(self) -> float:
        """Idle fraction of the pipeline: 1 - total compute / (stages * makespan)."""
        if self.makespan <= 0:
            return 0.0
        return 1.0 - sum(self.busy) / (len(self.busy) * self.makespan)


def ideal_bubble(num_stages: int, num_microbatches: int) -> float:
    return (num_stages - 1) / (num_microbatches + num_stages - 1)


def _cost_fn(cost):
    if cost is None:
        cost = {FORWARD: 1.0, BACKWARD: 2.0}
    if callable(cost):
        return cost
    table = dict(cost)
    return lambda stage, action: float(table.get(action.op, 0.0))


# (direction, kind) of each communication op: the channel key is (sender, receiver, kind).
def _channel(stage: int, action: Action) -> tuple[tuple[int, int, str], str]:
    if action.op == SEND_ACT:
        return (stage, stage + 1, "act"), "send"
    if action.op == RECV_ACT:
        return (stage - 1, stage, "act"), "recv"
    if action.op == SEND_GRAD:
        return (stage, stage - 1, "grad"), "send"
    return (stage + 1, stage, "grad"), "recv"


class _Replay:
    def __init__(self, plan: list[list[Action]], cost):
        self.p = len(plan)
        self.cost = _cost_fn(cost)
        self.items = [exchanges(list(acts)) for acts in plan]
        self.pc = [0] * self.p
        self.t = [0.0] * self.p
        self.busy = [0.0] * self.p
        self.posted = [None] * self.p           # per stage: [(channel, side, index)] of the open exchange
        self.channels: dict = {}                # key -> {"send": [(mb, t)], "recv": [(mb, t)]}
        self.done_f = [set() for _ in range(self.p)]
        self.done_b = [set() for _ in range(self.p)]
        self.got_act = [set() for _ in range(self.p)]
        self.got_grad = [set() for _ in range(self.p)]
        self.in_flight = [0] * self.p
        self.peak = [0] * self.p
        self.timeline = [[] for _ in range(self.p)]

    def fail(self, stage: int, msg: str):
        raise ScheduleError(f"stage {stage}: {msg}")

    def compute(self, s: int, a: Action) -> None:
        if a.op == FORWARD:
            if a.mb in self.done_f[s]:
                self.fail(s, f"forward({a.mb}) twice")
            if s > 0 and a.mb not in self.got_act[s]:
                self.fail(s, f"forward({a.mb}) before its activations were received")
            self.done_f[s].add(a.mb)
            self.in_flight[s] += 1
            self.peak[s] = max(self.peak[s], self.in_flight[s])
        elif a.op == BACKWARD:
            if a.mb in self.done_b[s]:
                self.fail(s, f"backward({a.mb}) twice")
            if a.mb not in self.done_f[s]:
                self.fail(s, f"backward({a.mb}) before forward({a.mb})")
            if s < self.p - 1 and a.mb not in self.got_grad[s]:
                self.fail(s, f"backward({a.mb}) before its output gradient was received")
            self.done_b[s].add(a.mb)
            self.in_flight[s] -= 1
        else:
            self.fail(s, f"unknown action {a!r}")
        dt = self.cost(s, a)
        self.timeline[s].append((self.t[s], self.t[s] + dt, a))
        self.t[s] += dt
        self.busy[s] += dt

    def post(self, s: int, group: tuple[Action, ...]) -> None:
        opened = []
        for a in group:
            if a.op in (SEND_ACT, RECV_GRAD) and s == self.p - 1:
                self.fail(s, f"{a!r} on the last stage (it has no next stage)")
            if a.op in (RECV_ACT, SEND_GRAD) and s == 0:
                self.fail(s, f"{a!r} on the first stage (it has no previous stage)")
            if a.op == SEND_ACT and a.mb not in self.done_f[s]:
                self.fail(s, f"{a!r} before forward({a.mb})")
            if a.op == SEND_GRAD and a.mb not in self.done_b[s]:
                self.fail(s, f"{a!r} before backward({a.mb})")
            key, side = _channel(s, a)
            chan = self.channels.setdefault(key, {"send": [], "recv": []})
            chan[side].append((a.mb, self.t[s]))
            opened.append((key, side, len(chan[side]) - 1, a))
        self.posted[s] = opened

    def try_complete(self, s: int) -> bool:
        finish = self.t[s]
        for key, side, idx, a in self.posted[s]:
            other = self.channels[key]["recv" if side == "send" else "send"]
            if idx >= len(other):
                return False
            mb, t_other = other[idx]
            if mb != a.mb:
                self.fail(s, f"{a!r} is matched with micro-batch {mb} of stage "
                             f"{key[0] if side == 'recv' else key[1]} (messages arrive in posting order)")
            finish = max(finish, max(self.t[s], t_other) + self.cost(s, a))
        for _, _, _, a in self.posted[s]:
            if a.op == RECV_ACT:
                self.got_act[s].add(a.mb)
            elif a.op == RECV_GRAD:
                self.got_grad[s].add(a.mb)
        self.t[s] = finish
        self.posted[s] = None
        return True

    def advance(self, s: int) -> bool:
        if self.pc[s] >= len(self.items[s]):
            return False
        item = self.items[s][self.pc[s]]
        if isinstance(item, Action):
            self.compute(s, item)
            self.pc[s] += 1
            return True
        fresh = self.posted[s] is None
        if fresh:
            self.post(s, item)
        if self.try_complete(s):
            self.pc[s] += 1
            return True
        return fresh

    def run(self) -> SimResult:
        while any(self.pc[s] < len(self.items[s]) for s in range(self.p)):
            progressed = False
            for s in range(self.p):
                while self.advance(s):
                    progressed = True
            if not progressed:
                waits = [f"stage {s} waits in {list(self.items[s][self.pc[s]])}"
                         for s in range(self.p) if self.pc[s] < len(self.items[s])]
                raise DeadlockError("deadlock: " + "; ".join(waits))
        self.check_complete()
        return SimResult(makespan=max(self.t) if self.t else 0.0, busy=self.busy, finish=list(self.t),
                         peak_in_flight=self.peak, timeline=self.timeline)

    def check_complete(self) -> None:
        forwards = self.done_f[0]
        for s in range(self.p):
            if self.done_f[s] != forwards or self.done_b[s] != forwards:
                self.fail(s, f"forwards {sorted(self.done_f[s])} and backwards {sorted(self.done_b[s])} "
                             f"differ from stage 0's micro-batches {sorted(forwards)}")
            if forwards != set(range(len(forwards))):
                self.fail(s, f"micro-batches {sorted(forwards)} are not 0..{len(forwards) - 1}")
        for key, chan in self.channels.items():
            if len(chan["send"]) != len(chan["recv"]):
                raise ScheduleError(f"{key[2]} messages from stage {key[0]} to stage {key[1]}: "
                                    f"{len(chan['send'])} sent but {len(chan['recv'])} received")
        for s in range(1, self.p):
            missing = self.done_f[s] - self.got_act[s]
            if missing:
                self.fail(s, f"never received activations of micro-batches {sorted(missing)}")


def replay(plan: list[list[Action]], cost=None) -> SimResult:
    """Run all stages' action lists together.

    cost: None (forward 1, backward 2, messages 0), a dict {op: time}, or a callable
    ``(stage, action) -> time``. Raises DeadlockError or ScheduleError."""
    return _Replay(plan, cost).run()
