"""No hangs: an error on any rank ends the whole job, with one clear message.

* `install_failure_handler` makes an unhandled exception on any rank (or in any
  thread) print one message naming the rank and its grid coordinates, then call
  `COMM_WORLD.Abort`, so the other ranks are killed instead of waiting forever
  in a collective.
* `agree_or_exit` runs a step that every rank performs (loading the job file,
  checking the grid) and exchanges a success flag, so that a user error on any
  rank is reported once, by the lowest failing rank, and every rank exits with
  code 2 cleanly.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback

from .errors import UsageError

ABORT_GRACE_SECONDS = 0.5
_describe = None  # callable returning "rank R (dp=., pp=., tp=.)" once a topology exists


def set_rank_description(fn) -> None:
    global _describe
    _describe = fn


def _mpi():
    """The MPI module if MPI is up (never initialises MPI itself)."""
    mod = sys.modules.get("mpi4py.MPI")
    if mod is None or not mod.Is_initialized() or mod.Is_finalized():
        return None
    return mod


def who() -> str:
    if _describe is not None:
        return _describe()
    mpi = _mpi()
    if mpi is None:
        return "rank 0"
    return f"rank {mpi.COMM_WORLD.Get_rank()} of {mpi.COMM_WORLD.Get_size()}"


def error_line(exc: BaseException) -> str:
    """The one line a user sees for a UsageError (rank named only in a multi-rank job)."""
    mpi = _mpi()
    if _describe is None and (mpi is None or mpi.COMM_WORLD.Get_size() == 1):
        return f"mpitrain: error: {exc}"
    return f"mpitrain: error: {who()}: {exc}"


def abort(code: int, message: str) -> None:
    """Print `message` and end the whole job (all ranks) with `code`."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()
    sys.stdout.flush()
    mpi = _mpi()
    if mpi is not None and mpi.COMM_WORLD.Get_size() > 1:
        # Give the launcher a moment to forward the message: once MPI_Abort
        # runs, it kills every rank and may drop output still in its pipes.
        time.sleep(ABORT_GRACE_SECONDS)
        mpi.COMM_WORLD.Abort(code)
    os._exit(code)


def _handle(exc_type, exc, tb) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        abort(130, f"mpitrain: {who()}: interrupted")
    if issubclass(exc_type, UsageError):
        abort(exc.exit_code, error_line(exc))
    detail = "".join(traceback.format_exception(exc_type, exc, tb))
    abort(1, f"{detail}mpitrain: {who()} failed: {exc_type.__name__}: {exc} -- aborting all ranks")


def install_failure_handler() -> None:
    sys.excepthook = _handle
    threading.excepthook = lambda a: _handle(a.exc_type, a.exc_value, a.exc_traceback)


def agree_or_exit(step, comm=None):
    """Run `step()` on every rank; if it raises a UsageError anywhere, the lowest
    failing rank prints the one-line message and all ranks exit with code 2."""
    error = None
    try:
        result = step()
    except UsageError as e:
        error, result = e, None
    mpi = _mpi()
    if mpi is None and comm is None:
        if error is not None:
            sys.stderr.write(f"mpitrain: error: {error}\n")
            sys.exit(error.exit_code)
        return result
    from mpi4py import MPI

    comm = comm or MPI.COMM_WORLD
    first_failed = comm.allreduce(comm.Get_rank() if error else comm.Get_size(), op=MPI.MIN)
    if first_failed < comm.Get_size():
        if comm.Get_rank() == first_failed:
            sys.stderr.write(f"mpitrain: error: {error}\n")
            sys.stderr.flush()
        sys.exit(2)
    return result


def on_root_or_exit(step, comm, root: int = 0):
    """Run `step()` on `root` only and broadcast its result; a UsageError there is
    printed once by `root` and every rank exits with code 2 (no traceback, no hang)."""
    error = result = None
    if comm.Get_rank() == root:
        try:
            result = step()
        except UsageError as e:
            error = e
    failed, result = comm.bcast((error is not None, result), root=root)
    if failed:
        if comm.Get_rank() == root:
            sys.stderr.write(f"mpitrain: error: {error}\n")
            sys.stderr.flush()
        sys.exit(2)
    return result


def exit_everywhere(message: str, comm) -> None:
    """Collective: every rank knows the same user-facing failure; rank 0 prints it
    once and all ranks exit with code 2."""
    if comm.Get_rank() == 0:
        sys.stderr.write(f"mpitrain: error: {message}\n")
        sys.stderr.flush()
    sys.stdout.flush()
    sys.exit(2)
