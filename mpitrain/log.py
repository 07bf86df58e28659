"""Logging: rank 0 speaks; other ranks are quiet unless asked (`--verbose`,
`runtime.verbose` or MPITRAIN_VERBOSE=1). Optional per-rank log files."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LOGGER = logging.getLogger("mpitrain")


def verbose_from_env() -> bool:
    return os.environ.get("MPITRAIN_VERBOSE", "") not in ("", "0", "false", "no")


def setup_logging(rank: int, verbose: bool = False, rank_log_dir: str | Path | None = None) -> logging.Logger:
    LOGGER.handlers.clear()
    LOGGER.setLevel(logging.DEBUG)
    LOGGER.propagate = False
    console = logging.StreamHandler(sys.stdout)
    if rank == 0:
        console.setFormatter(logging.Formatter("%(message)s"))
        console.setLevel(logging.INFO)
    else:
        console.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
        console.setLevel(logging.INFO if (verbose or verbose_from_env()) else logging.ERROR)
    LOGGER.addHandler(console)
    if rank_log_dir is not None:
        path = Path(rank_log_dir)
        path.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path / f"rank-{rank}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        handler.setLevel(logging.DEBUG)
        LOGGER.addHandler(handler)
    return LOGGER


def progress(iterable=None, rank: int = 0, **kwargs):
    """A tqdm progress bar on rank 0 (and only when stderr is a terminal or
    MPITRAIN_PROGRESS=1); a plain iterable elsewhere."""
    from tqdm import tqdm

    forced = os.environ.get("MPITRAIN_PROGRESS")
    show = rank == 0 and (sys.stderr.isatty() if forced is None else forced not in ("0", ""))
    return tqdm(iterable, disable=not show, dynamic_ncols=True, leave=False, **kwargs)
