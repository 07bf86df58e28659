"""A background thread that advances an AllReducer's transfers while the caller computes.

MPI moves data only inside MPI calls (MPICH has no progress thread by default),
so a non-blocking all-reduce started during backward would otherwise sit idle
until the next call. While transfers are in flight the thread calls
``reducer.progress()`` every ``interval`` seconds and sleeps in between (no busy
polling, so it does not take a core from the computation). Every use of the
reducer must hold ``lock``: the owner does so while starting or waiting.
"""
from __future__ import annotations

import threading
import time


class ProgressThread:
    def __init__(self, reducer, lock: threading.Lock, interval: float = 2e-4):
        self.reducer, self.lock, self.interval = reducer, lock, interval
        self._wake = threading.Event()
        self._stop = False
        self.polls = 0
        self._thread = threading.Thread(target=self._run, name="mpitrain-progress", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        """Transfers were started: poll until none is left. Call with ``lock`` held."""
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stop:
                return
            with self.lock:
                self.reducer.progress()
                self.polls += 1
                if not self.reducer._active:
                    self._wake.clear()
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)
