"""Fault injection for the fault-injection suite (`benchmarks/faults.py`).

MPITRAIN_FAULT="rank=R,at=POINT,nth=N,signal=KILL|STOP" makes world rank R send
itself the signal the N-th time it reaches POINT: a named moment of the engine
("forward", "backward", "all-reduce" (a gradient bucket launched), "checkpoint
write", "evaluation") or an MPI wait by
operation name as recorded by `comm.waits` ("ring all-reduce", "pipeline
receive", "pipeline send", "Allreduce", ...; matched case-insensitively, as a
prefix). signal=NAN at "loss" makes the N-th micro-batch loss NaN instead.
Unset, `point`, `poison` and `before` cost one attribute lookup.
"""
from __future__ import annotations

import os
import signal

_plan = None      # (at, nth, signal) for this rank, or False when no fault is planned here
_count = 0


def _load():
    global _plan
    spec = os.environ.get("MPITRAIN_FAULT", "")
    _plan = False
    if not spec:
        return
    fields = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
    rank = int(os.environ.get("PMI_RANK", os.environ.get("SLURM_PROCID", os.environ.get("OMPI_COMM_WORLD_RANK", -1))))
    if rank == int(fields.get("rank", -2)):
        name = fields.get("signal", "KILL").upper()
        sig = "NAN" if name == "NAN" else getattr(signal, "SIG" + name)
        _plan = (fields.get("at", "").lower(), int(fields.get("nth", 1)), sig)


def point(name: str) -> None:
    """A named moment (forward, backward, checkpoint write, evaluation)."""
    if _plan is None:
        _load()
    if _plan:
        _hit(name)


def poison(name: str, value):
    """`value`, or NaN times it when the fault planned here is signal=NAN at `name`."""
    if _plan is None:
        _load()
    if _plan and _plan[2] == "NAN" and name.lower().startswith(_plan[0]):
        global _count
        _count += 1
        if _count == _plan[1]:
            return value * float("nan")
    return value


def before(op: str) -> None:
    """An MPI wait or start is about to happen."""
    if _plan is None:
        _load()
    if _plan:
        _hit(op)


def _hit(name: str) -> None:
    global _count
    at, nth, sig = _plan
    if sig != "NAN" and name.lower().startswith(at):
        _count += 1
        if _count == nth:
            import sys
            import time
            sys.stderr.write(f"mpitrain: fault injection: {name} #{nth}: sending {signal.Signals(sig).name} "
                             f"to myself (pid {os.getpid()}) at {time.time():.3f}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), sig)
