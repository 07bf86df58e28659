"""Global gradient-norm clipping for a pipeline.

Each stage holds part of the model, so the norm is sqrt(sum over stages of the
local sum of squares): one all-reduce over the pipeline group. Data-parallel
replicas hold identical (already averaged) gradients and compute the same norm
without communicating. Matches `torch.nn.utils.clip_grad_norm_` on the whole model.
"""
from __future__ import annotations

import math


def local_sq_norm(params, exclude: set[int] = frozenset()) -> float:
    """Sum of squared gradient entries (float64), each parameter once, skipping ids in `exclude`."""
    total, seen = 0.0, set()
    for p in params:
        if p.grad is None or id(p) in seen or id(p) in exclude:
            continue
        seen.add(id(p))
        total += float(p.grad.detach().double().pow(2).sum())
    return total


def global_grad_norm(params, pp_comm=None, exclude: set[int] = frozenset()) -> float:
    sq = local_sq_norm(params, exclude)
    if pp_comm is not None and pp_comm.Get_size() > 1:
        from mpi4py import MPI
        sq = pp_comm.allreduce(sq, op=MPI.SUM)
    return math.sqrt(sq)


def clip_grad_norm_(params, max_norm: float, pp_comm=None, exclude: set[int] = frozenset()) -> float:
    """Scale all gradients so their global norm is at most `max_norm`; return the
    norm before clipping. Collective over `pp_comm`."""
    params = list(params)
    norm = global_grad_norm(params, pp_comm, exclude)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        seen = set()
        for p in params:
            if p.grad is not None and id(p) not in seen:
                seen.add(id(p))
                p.grad.detach().mul_(coef)
    return norm
