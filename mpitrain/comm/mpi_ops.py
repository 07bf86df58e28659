"""The MPI library's own all-reduce on torch tensors (in place, non-blocking).

float32/float64/int32/int64 use ``MPI.SUM`` on typed numpy views. MPI has no
float16/bfloat16 sum, so those are sent as 16-bit integers and added by a
user-defined op that reinterprets the bytes and adds through torch.
"""
from __future__ import annotations

import numpy as np
import torch
from mpi4py import MPI

from . import waits

_NUMPY = {torch.float32: np.float32, torch.float64: np.float64,
          torch.int32: np.int32, torch.int64: np.int64}
_HALF_OPS: dict[torch.dtype, MPI.Op] = {}
# Small tensors are reduced often (gradient buckets, metrics); building their numpy
# view costs as much as the reduction. Views of up to _CACHE_MAX_BYTES are cached;
# a cached view keeps its memory alive, so a hit on (address, numel, dtype) is
# always the same memory.
_CACHE_MAX_BYTES = 256 << 10
_CACHE_ENTRIES = 16
_views: dict[tuple, tuple] = {}


def _half_sum(dtype: torch.dtype) -> MPI.Op:
    op = _HALF_OPS.get(dtype)
    if op is None:
        def add(inbuf, inoutbuf, datatype, _dtype=dtype):
            src = torch.from_numpy(np.frombuffer(inbuf, dtype=np.int16)).view(_dtype)
            dst = torch.from_numpy(np.frombuffer(inoutbuf, dtype=np.int16)).view(_dtype)
            dst.add_(src)
        op = MPI.Op.Create(add, commute=True)
        _HALF_OPS[dtype] = op
    return op


def buffer_and_op(tensor: torch.Tensor):
    """(buffer, MPI op) for summing a contiguous ``tensor`` with the MPI library: a numpy
    view for host memory, the tensor itself for device memory (CUDA-aware MPI)."""
    numel = tensor.numel()
    if not tensor.is_cpu:
        flat = tensor.reshape(-1)
        if tensor.dtype in _NUMPY:
            return flat, MPI.SUM
        return flat.view(torch.int16), _half_sum(tensor.dtype)
    small = numel * tensor.element_size() <= _CACHE_MAX_BYTES
    if small:
        key = (tensor.data_ptr(), numel, tensor.dtype)
        hit = _views.get(key)
        if hit is not None:
            return hit
    flat = tensor if tensor.dim() == 1 else tensor.reshape(-1)
    if tensor.dtype in _NUMPY:
        found = flat.numpy(), MPI.SUM
    else:
        found = flat.view(torch.int16).numpy(), _half_sum(tensor.dtype)
    if small:
        if len(_views) >= _CACHE_ENTRIES:
            del _views[next(iter(_views))]
        _views[key] = found
    return found


class MpiAllreduce:
    """``MPI_Iallreduce(IN_PLACE, SUM)`` in flight; divides by the group size at the end
    when averaging."""

    def __init__(self, comm, tensor: torch.Tensor, average: bool = False):
        self.tensor, self.average, self.n = tensor, average, comm.Get_size()
        self.group = getattr(comm, "group", "")
        self.buf, op = buffer_and_op(tensor)
        self.request = comm.Iallreduce(MPI.IN_PLACE, self.buf, op=op)
        self.done = False

    def _finish(self):
        if self.average:
            self.tensor.div_(self.n)
        self.done = True

    def progress(self) -> bool:
        if not self.done and self.request.Test():
            self._finish()
        return self.done

    def wait(self) -> torch.Tensor:
        if not self.done:
            waits.wait(self.request, "Iallreduce", self.group)
            self._finish()
        return self.tensor


def mpi_allreduce_(comm, tensor: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Blocking ``MPI_Allreduce`` in place on a contiguous tensor."""
    buf, op = buffer_and_op(tensor)
    comm.Allreduce(MPI.IN_PLACE, buf, op=op)
    if average:
        tensor.div_(comm.Get_size())
    return tensor
