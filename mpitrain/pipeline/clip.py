"""Global gradient-norm clipping for a pipeline, with tensor parallelism.

Each stage holds part of the model, so the norm is sqrt(sum over stages of the
local sum of squares): one all-reduce over the pipeline group. Within a stage,
a parameter split over the tensor group (`param.tp_split`) contributes the sum
of its shards' squares (an all-reduce over the tensor group), while a replicated
one -- the same on every shard -- counts once. Data-parallel replicas hold
identical (already averaged) gradients and compute the same norm without
communicating. Matches `torch.nn.utils.clip_grad_norm_` on the whole model.

With ZeRO-1 (`dp/zero.py`) each replica holds only its segment of a gradient
reduced (`grads`: id(parameter) -> that segment): the squares of the segments
are summed over the data-parallel group (`dp_comm`) first, and clipping scales
the segments.
"""
from __future__ import annotations

import math

import numpy as np

from ..tp.sharding import split_of


def local_sq_norms(params, exclude: set[int] = frozenset(), grads: dict | None = None) -> tuple[float, float]:
    """Sums of squared gradient entries (float64) of (split, whole) parameters, each
    parameter once, skipping ids in `exclude`; `grads` (ZeRO-1): count only this part
    of each gradient (a parameter without one counts nothing here)."""
    split, whole, seen = 0.0, 0.0, set()
    for p in params:
        if id(p) in seen or id(p) in exclude:
            continue
        g = p.grad if grads is None else grads.get(id(p))
        if g is None:
            continue
        seen.add(id(p))
        sq = float(g.detach().double().pow(2).sum())
        if split_of(p) is not None:
            split += sq
        else:
            whole += sq
    return split, whole


def global_grad_norm(params, pp_comm=None, exclude: set[int] = frozenset(), tp_comm=None, dp_comm=None,
                     grads: dict | None = None) -> float:
    split, whole = local_sq_norms(params, exclude, grads)
    if dp_comm is not None and dp_comm.Get_size() > 1:  # sharded gradients: each replica holds a part
        from mpi4py import MPI

        both = np.array([split, whole], dtype=np.float64)
        dp_comm.Allreduce(MPI.IN_PLACE, both, op=MPI.SUM)
        split, whole = float(both[0]), float(both[1])
    if tp_comm is not None and tp_comm.Get_size() > 1:
        split = tp_comm.allreduce(split)
    sq = split + whole
    if pp_comm is not None and pp_comm.Get_size() > 1:
        sq = pp_comm.allreduce(sq)
    return math.sqrt(sq)


def clip_grad_norm_(params, max_norm: float, pp_comm=None, exclude: set[int] = frozenset(),
                    tp_comm=None, dp_comm=None, grads: dict | None = None) -> float:
    """Scale all gradients (`grads`: those parts) so their global norm is at most
    `max_norm`; return the norm before clipping. Collective over `pp_comm`,
    `tp_comm` and `dp_comm`."""
    params = list(params)
    norm = global_grad_norm(params, pp_comm, exclude, tp_comm, dp_comm, grads)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        seen = set()
        for p in params:
            g = p.grad if grads is None else grads.get(id(p))
            if g is not None and id(p) not in seen:
                seen.add(id(p))
                g.detach().mul_(coef)
    return norm
