"""Requeue the running job so that it resumes from its checkpoint: `scontrol
requeue` (array-aware id); without scontrol (e.g. in a container), the
follow-up job submitted at the start (`--dependency=afterany`) takes over."""
from __future__ import annotations

import shutil
import subprocess

from .env import requeue_id


def requeue(log) -> bool:
    job = requeue_id()
    if job is None:
        return False
    if shutil.which("scontrol") is None:
        log.warning("scontrol not found: not requeued; a follow-up job (submit --follow-ups) continues the run")
        return False
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        log.warning(f"scontrol requeue {job} failed: {result.stderr.strip()}")
        return False
    log.info(f"requeued Slurm job {job}; it resumes from the checkpoint")
    return True
