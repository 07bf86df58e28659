"""The communication of tensor parallelism as autograd functions over the
tensor group (an mpi4py communicator):

    copy_to_group      forward: identity      backward: all-reduce (sum)
    reduce_from_group  forward: all-reduce    backward: identity
    gather_last_dim    forward: all-gather    backward: this rank's slice

Activations are small and latency-bound, so they go through MPI_Allreduce /
MPI_Allgather directly rather than the chunked ring (which pays off for large
gradient buckets)."""
from __future__ import annotations

import time

import torch

from ..timing import TIMER


def allreduce(t: torch.Tensor, comm, op=None) -> torch.Tensor:
    """Sum (or `op`) over `comm`; 16-bit floats (bf16 training) are reduced in fp32,
    which numpy and MPI can add, and cast back."""
    from mpi4py import MPI

    if t.dtype in (torch.bfloat16, torch.float16):
        return allreduce(t.float(), comm, op).to(t.dtype)

    start = time.perf_counter()
    buf = t.detach().to("cpu", copy=True).contiguous()
    comm.Allreduce(MPI.IN_PLACE, buf.numpy(), op=op or MPI.SUM)
    out = buf.to(t.device)
    TIMER.record("tp", "tensor-parallel all-reduce", start, time.perf_counter() - start)
    return out


class _Copy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, comm):
        ctx.comm = comm
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return allreduce(grad, ctx.comm), None


class _Reduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, comm):
        return allreduce(x, comm)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, comm):
        ctx.comm, ctx.width = comm, x.shape[-1]
        start = time.perf_counter()
        local = x.detach().to("cpu", dtype=torch.float32 if x.dtype in (torch.bfloat16, torch.float16)
                              else x.dtype, copy=True).contiguous()
        out = torch.empty((comm.Get_size(),) + tuple(local.shape), dtype=local.dtype)
        comm.Allgather(local.numpy(), out.numpy())
        TIMER.record("tp", "tensor-parallel all-gather", start, time.perf_counter() - start)
        return torch.cat(list(out), dim=-1).to(x.device, x.dtype)

    @staticmethod
    def backward(ctx, grad):
        r, w = ctx.comm.Get_rank(), ctx.width
        return grad[..., r * w:(r + 1) * w].contiguous(), None


def copy_to_group(x, comm):
    return _Copy.apply(x, comm)


def reduce_from_group(x, comm):
    return _Reduce.apply(x, comm)


def gather_last_dim(x, comm):
    return _Gather.apply(x, comm)
