"""The stall watchdog: a stuck rank never hangs the job silently.

A thread per rank reads the wait in progress (`comm.waits.MONITOR`). When one
lasts longer than the deadline, the rank

1. prints one line: itself (rank and grid coordinates), the operation, the
   group, the peer, its collective sequence number and where the engine was;
2. writes its Python stacks (`faulthandler`, every thread) to
   RUN_DIR/logs/stall-rank-R.log, and a note to RUN_DIR/logs/stall-<launch>/;
3. waits a few seconds for the other ranks' notes; the lowest reporting rank
   names the ranks that reported *no* wait -- stopped, or busy outside MPI: the
   likely culprits -- or, when every rank waits, says so (a deadlock, or
   mismatched collectives: `runtime.check_collectives`);
4. ends the job with EXIT_STALLED (77), which a Slurm wrapper may requeue (the
   batch scripts of `mpitrain submit` exit 77 too: the watchdog touches
   MPITRAIN_STALL_FILE, since srun reports the stopped rank's SIGKILL).

The deadline is `runtime.stall_timeout` seconds, or (0) calibrated: STARTUP
seconds for the first steps, then max(FLOOR, MULTIPLE x the slowest of them).
Waits marked patient (a rank preparing data alone) have none.
"""
from __future__ import annotations

import faulthandler
import json
import os
import sys
import threading
import time
from pathlib import Path

from .comm.waits import MONITOR

EXIT_STALLED = 77
STARTUP, FLOOR, MULTIPLE, CALIBRATION_STEPS = 300.0, 30.0, 10.0, 3
GRACE = 3.0


class Watchdog:
    def __init__(self, world, describe: str, log_dir: Path | None, timeout: float = 0.0, interval: float = 0.5):
        """Collective over `world` (the ranks agree on a directory for this launch's notes)."""
        self.world, self.describe, self.timeout, self.interval = world, describe, float(timeout), interval
        self.rank, self.size = world.Get_rank(), world.Get_size()
        launch = world.bcast(time.strftime("%Y%m%d-%H%M%S") if self.rank == 0 else None, root=0)
        self.log_dir = Path(log_dir) if log_dir else None
        self.notes = self.log_dir / f"stall-{launch}" if self.log_dir else None
        self.steps: list[float] = []
        self.deadline = self.timeout or STARTUP
        self._stop = threading.Event()
        self._thread = None

    def observe_step(self, seconds: float) -> None:
        """Calibrate from the first steps' times (when no timeout is set)."""
        if self.timeout or len(self.steps) >= CALIBRATION_STEPS:
            return
        self.steps.append(seconds)
        if len(self.steps) == CALIBRATION_STEPS:
            self.deadline = max(FLOOR, MULTIPLE * max(self.steps))

    def start(self) -> "Watchdog":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mpitrain-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            record = MONITOR.current
            if record is None or record.patient:
                continue
            waited = time.monotonic() - record.started
            if waited > self.deadline and MONITOR.current is record:
                self._fire(record, waited)
                return

    def _fire(self, record, waited: float) -> None:
        from .failure import abort

        line = (f"mpitrain: stall: {self.describe} waited {waited:.0f} s (deadline {self.deadline:.0f} s) in "
                f"{record.describe()}")
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        marker = os.environ.get("MPITRAIN_STALL_FILE")
        if marker:  # a batch script's way to tell a stall (77) from the stopped rank's SIGKILL
            try:
                Path(marker).touch()
            except OSError:
                pass
        self._write_notes(line, record)
        time.sleep(GRACE)
        abort(EXIT_STALLED, self._summary() or "")

    def _write_notes(self, line: str, record) -> None:
        if self.notes is None:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            return
        try:
            self.notes.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / f"stall-rank-{self.rank}.log", "w") as f:
                f.write(line + "\nlast collectives: " + ", ".join(MONITOR.history) + "\n\n")
                f.flush()
                faulthandler.dump_traceback(file=f, all_threads=True)
            (self.notes / f"rank-{self.rank}.json").write_text(
                json.dumps({"rank": self.rank, "wait": record.describe(), "seq": record.seq}))
        except OSError as e:
            sys.stderr.write(f"mpitrain: stall: cannot write notes to {self.log_dir} ({e.strerror})\n")

    def _summary(self) -> str | None:
        """The lowest reporting rank's verdict (None elsewhere: their own line was enough)."""
        code = f"ending the job (exit code {EXIT_STALLED})"
        if self.notes is None:
            return f"mpitrain: stall: {self.describe}: {code}"
        reported = sorted(int(p.stem.split("-")[1]) for p in self.notes.glob("rank-*.json"))
        if reported and reported[0] != self.rank:
            return None
        silent = sorted(set(range(self.size)) - set(reported))
        if silent:
            verdict = (f"rank(s) {', '.join(map(str, silent))} reported no wait: stopped, or busy outside MPI "
                       "(compute, I/O) -- the likely culprit(s)")
        else:
            verdict = ("every rank is waiting: a deadlock or mismatched collectives (run with "
                       "runtime.check_collectives = true)")
        return f"mpitrain: stall: {verdict}; stacks in {self.log_dir}/stall-rank-*.log; {code}"
