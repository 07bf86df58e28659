"""Global gradient-norm clipping for a pipeline, with tensor parallelism.

Each stage holds part of the model, so the norm is sqrt(sum over stages of the
local sum of squares): one all-reduce over the pipeline group. Within a stage,
a parameter split over the tensor group (`param.tp_split`) contributes the sum
of its shards' squares (an all-reduce over the tensor group), while a replicated
one -- the same on every shard -- counts once. Data-parallel replicas hold
identical (already averaged) gradients and compute the same norm without
communicating. Matches `torch.nn.utils.clip_grad_norm_` on the whole model.
"""
from __future__ import annotations

import math

from ..tp.sharding import split_of


def local_sq_norms(params, exclude: set[int] = frozenset()) -> tuple[float, float]:
    """Sums of squared gradient entries (float64) of (split, whole) parameters, each
    parameter once, skipping ids in `exclude`."""
    split, whole, seen = 0.0, 0.0, set()
    for p in params:
        if p.grad is None or id(p) in seen or id(p) in exclude:
            continue
        seen.add(id(p))
        sq = float(p.grad.detach().double().pow(2).sum())
        if split_of(p) is not None:
            split += sq
        else:
            whole += sq
    return split, whole


def global_grad_norm(params, pp_comm=None, exclude: set[int] = frozenset(), tp_comm=None) -> float:
    split, whole = local_sq_norms(params, exclude)
    if tp_comm is not None and tp_comm.Get_size() > 1:
        split = tp_comm.allreduce(split)
    sq = split + whole
    if pp_comm is not None and pp_comm.Get_size() > 1:
        sq = pp_comm.allreduce(sq)
    return math.sqrt(sq)


def clip_grad_norm_(params, max_norm: float, pp_comm=None, exclude: set[int] = frozenset(),
                    tp_comm=None) -> float:
    """Scale all gradients so their global norm is at most `max_norm`; return the
    norm before clipping. Collective over `pp_comm` and `tp_comm`."""
    params = list(params)
    norm = global_grad_norm(params, pp_comm, exclude, tp_comm)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        seen = set()
        for p in params:
            if p.grad is not None and id(p) not in seen:
                seen.add(id(p))
                p.grad.detach().mul_(coef)
    return norm
