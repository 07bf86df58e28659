"""No hangs: an error on any rank ends the whole job, with one clear message.

* `install_failure_handler` makes an unhandled exception on any rank (or in any
  thread) print one message naming the rank and its grid coordinates, then call
  `COMM_WORLD.Abort`, so the other ranks are killed instead of waiting forever
  in a collective.
* `agree_or_exit` runs a step that every rank performs (loading the job file,
  checking the grid) and exchanges a success flag, so that a user error on any
  rank is reported once, by the lowest failing rank, and every rank exits with
  code 2 cleanly. `raise_together` is the same agreement without the exit: a
  collective step that may fail on some ranks only raises on all of them.
* `describe_exception` turns an exception raised by task code (a task method, a
  layer builder) into a phrase for such a one-line error: its type, message and
  the line of the task's code it came from.
"""
from __future__ import annotations

import os
import re
import sys
import sysconfig
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


def one_line(text) -> str:
    """`text` with its line breaks (and the spaces around them) folded into single spaces."""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(text).strip())


def error_line(exc: BaseException) -> str:
    """The one line a user sees for a UsageError (rank named only in a multi-rank job)."""
    mpi = _mpi()
    if _describe is None and (mpi is None or mpi.COMM_WORLD.Get_size() == 1):
        return f"mpitrain: error: {one_line(exc)}"
    return f"mpitrain: error: {who()}: {one_line(exc)}"


def _report(error) -> None:
    sys.stderr.write(f"mpitrain: error: {one_line(error)}\n")
    sys.stderr.flush()


_LIBRARY_DIRS = tuple(filter(None, {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}))
_ENGINE = os.path.dirname(os.path.abspath(__file__)) + os.sep  # mpitrain, whose tasks/ are task code
_TASKS = os.path.join(_ENGINE, "tasks") + os.sep


def _in_task_code(filename: str) -> bool:
    """Whether a traceback line is the task's: not the standard library, an installed
    package or mpitrain's engine (mpitrain's built-in tasks are task code)."""
    if filename.startswith(("<",) + _LIBRARY_DIRS):
        return False
    return not filename.startswith(_ENGINE) or filename.startswith(_TASKS)


def describe_exception(exc: BaseException) -> str:
    """'ValueError: message (at my_task.py:42)': the exception and the deepest line
    of the task's code in its traceback (none named if it has none), for a
    one-line error."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _in_task_code(f.filename)]
    text = f"{type(exc).__name__}: {one_line(exc)}" if str(exc).strip() else type(exc).__name__
    if not frames:
        return text
    path = frames[-1].filename
    relative = os.path.relpath(path)
    return f"{text} (at {path if relative.startswith('..') else relative}:{frames[-1].lineno})"


def abort(code: int, message: str) -> None:
    """Print `message` (if any) and end the whole job (all ranks) with `code`."""
    if message:
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
            _report(error)
            sys.exit(error.exit_code)
        return result
    from mpi4py import MPI

    comm = comm or MPI.COMM_WORLD
    first_failed = comm.allreduce(comm.Get_rank() if error else comm.Get_size(), op=MPI.MIN)
    if first_failed < comm.Get_size():
        if comm.Get_rank() == first_failed:
            _report(error)
        sys.exit(2)
    return result


def raise_together(step, comm):
    """Run `step()` on every rank of `comm` (collective); if it raises a UsageError
    on any rank, every rank raises the error of the lowest failing rank, so that
    no rank goes on into a collective the others will not enter."""
    error = result = None
    try:
        result = step()
    except UsageError as e:
        error = e
    first = next((e for e in comm.allgather(error) if e is not None), None)
    if first is not None:
        raise first
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
            _report(error)
        sys.exit(2)
    return result


def exit_everywhere(message: str, comm) -> None:
    """Collective: every rank knows the same user-facing failure; rank 0 prints it
    once and all ranks exit with code 2."""
    if comm.Get_rank() == 0:
        _report(message)
    sys.stdout.flush()
    sys.exit(2)
