"""Stop signals: the warning Slurm sends before the time limit (`--signal`),
SIGTERM (preemption without warning, `scancel`) and SIGINT (Ctrl-C; a second
one interrupts at once).

The handler only records the signal. At every step boundary the ranks combine
what they got with a MAX over the world, so all of them stop at the same step
even when only some were signalled; the Trainer then writes a normal committed
checkpoint and, for the warning signal, rank 0 requeues the job.

SIGUSR2 is the warning signal: MPI libraries leave it alone (SIGUSR1 is taken
by some) and srun delivers it to the ranks. Launchers that do not forward it
(MPICH's mpiexec, whose ranks may not even descend from the batch shell) get a
file instead: the batch script traps the signal and creates the file named by
MPITRAIN_STOP_FILE, which rank 0 looks for at every step boundary.

"""
from __future__ import annotations

import os
import signal
from pathlib import Path

NONE, WARNED, TERMINATED, INTERRUPTED = 0, 1, 2, 3
WARNING_SIGNAL = signal.SIGUSR2
EXIT_REQUEUED = 75     # stopped for the time limit, checkpoint committed, job requeued
EXIT_STOPPED = 76      # stopped by SIGTERM or the requeue cap, checkpoint committed, not requeued
NAMES = {WARNED: "the time-limit warning (SIGUSR2)", TERMINATED: "SIGTERM", INTERRUPTED: "SIGINT (Ctrl-C)"}


class StopSignals:
    def __init__(self):
        self.got = NONE
        self._previous = {}

    def install(self) -> "StopSignals":
        """Idempotent; call it as early as possible (a signal before it kills the process)."""
        if not self._previous:
            for sig, code in ((WARNING_SIGNAL, WARNED), (signal.SIGTERM, TERMINATED), (signal.SIGINT, INTERRUPTED)):
                self._previous[sig] = signal.signal(sig, lambda s, f, code=code: self._record(code))
        return self

    def _record(self, code: int) -> None:
        self.got = max(self.got, code)
        if code == INTERRUPTED:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def agreed(self, comm) -> int:
        """What any rank got (collective; at a step boundary). The stop file counts as
        the warning signal and is removed once seen."""
        from mpi4py import MPI

        path = os.environ.get("MPITRAIN_STOP_FILE")
        if path and comm.Get_rank() == 0 and Path(path).exists():
            Path(path).unlink(missing_ok=True)
            self._record(WARNED)
        return comm.allreduce(self.got, op=MPI.MAX)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


STOP = StopSignals()  # the process's one recorder
