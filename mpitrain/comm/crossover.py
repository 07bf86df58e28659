"""The size at which an AllReducer's ``auto`` switches from MPI_Allreduce to its
large-message path (shared memory, or the ring), measured on its communicator:
both are timed at a few sizes, alternating, the slowest rank's time counts, and
every rank derives the same crossover from the same numbers."""
from __future__ import annotations

import time

import numpy as np
import torch
from mpi4py import MPI

# Probed sizes. Above 8 MiB the ring has been at least even with MPI_Allreduce
# wherever we measured (shared memory wins from about 1 MiB), and both overlap
# with computation much better, so the measured crossover is at most 16 MiB.
PROBE_BYTES = (4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 8 << 20)


def measure_crossover(reducer, sizes=PROBE_BYTES, reps: int = 15) -> int:
    """Time MPI and the large-message path (shared memory if available, else the
    ring) on this communicator (alternating, median of ``reps``, the slowest rank's
    time counts) and return the threshold that loses least over the probed sizes:
    the sum of log(time of the chosen algorithm / time of the faster one) is
    minimal, so one noisy probe cannot move the crossover far."""
    times = np.zeros((2, len(sizes), reps))
    large = "shm" if reducer.buffers is not None else "ring"
    buf = reducer.empty(max(sizes) // 4, torch.float32)
    saved, scratch = reducer.algorithm, reducer._scratch_free[0]
    try:
        for i, nbytes in enumerate(sizes):
            t = buf[:nbytes // 4]
            for rep in range(-1, reps):          # rep -1 warms up
                for k, algo in enumerate(("mpi", large)):
                    reducer.algorithm = algo
                    reducer.comm.Barrier()
                    t0 = time.perf_counter()
                    reducer._start(t, False, scratch).wait()
                    if rep >= 0:
                        times[k, i, rep] = time.perf_counter() - t0
    finally:
        reducer.algorithm = saved
    reducer.release(buf)
    reducer.comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)
    return crossover_from_times(sizes, np.median(times[0], axis=1), np.median(times[1], axis=1))


def crossover_from_times(sizes, mpi_s, ring_s) -> int:
    """The threshold (ring at or above it) with the least summed log-loss over the probes."""
    best_loss, best = None, 2 * sizes[-1]
    fastest = np.minimum(mpi_s, ring_s)
    for c in range(len(sizes) + 1):           # ring for probes c.. ; c == len(sizes): never
        chosen = np.concatenate([mpi_s[:c], ring_s[c:]])
        loss = float(np.sum(np.log(chosen / fastest)))
        if best_loss is None or loss < best_loss - 1e-12:
            best_loss = loss
            if c == 0:
                best = 0
            elif c == len(sizes):
                best = 2 * sizes[-1]
            else:
                best = int(np.sqrt(sizes[c - 1] * sizes[c]))
    return best
