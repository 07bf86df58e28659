"""Cross-entropy over logits split by vocabulary across the tensor group: the
full logits are never built on one rank. Three small all-reduces (max, target
logit, sum of exponentials) give the exact loss; padded vocabulary columns
(when the vocabulary does not divide by tp) are masked out of it."""
from __future__ import annotations

import torch

from .ops import allreduce

IGNORE_INDEX = -100


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, comm, vocab: int, start: int):
        """logits [..., per] (this rank's columns start..start+per of the padded
        vocabulary), targets [...] global ids or IGNORE_INDEX; per-position losses."""
        from mpi4py import MPI

        logits = logits.float()
        per = logits.shape[-1]
        columns = torch.arange(start, start + per, device=logits.device)
        padded = columns >= vocab
        logits = logits.masked_fill(padded, float("-inf"))
        top = allreduce(logits.max(dim=-1).values, comm, MPI.MAX)
        shifted = logits - top.unsqueeze(-1)
        local = targets - start
        here = (local >= 0) & (local < per) & (targets != IGNORE_INDEX)
        picked = shifted.gather(-1, local.clamp(0, per - 1).unsqueeze(-1)).squeeze(-1)
        target_logit = allreduce(torch.where(here, picked, torch.zeros_like(picked)), comm)
        exp = shifted.exp()
        sum_exp = allreduce(exp.sum(dim=-1), comm)
        loss = torch.log(sum_exp) - target_logit
        ignored = targets == IGNORE_INDEX
        loss = loss.masked_fill(ignored, 0.0)
        ctx.save_for_backward(exp / sum_exp.unsqueeze(-1), local.clamp(0, per - 1), here, ignored)
        return loss

    @staticmethod
    def backward(ctx, grad):
        softmax, local, here, ignored = ctx.saved_tensors
        g = softmax.clone()
        g.scatter_add_(-1, local.unsqueeze(-1), -here.to(g.dtype).unsqueeze(-1))
        g = g * (grad * (~ignored).to(g.dtype)).unsqueeze(-1)
        return g, None, None, None, None


def vocab_parallel_cross_entropy(logits, targets, comm, vocab: int) -> torch.Tensor:
    """Per-position cross-entropy (0 where targets == IGNORE_INDEX) of logits split by
    vocabulary over `comm` (rank r holds columns r*per .. (r+1)*per of the padded
    vocabulary)."""
    start = comm.Get_rank() * logits.shape[-1]
    return _VocabParallelCE.apply(logits, targets, comm, vocab, start)
