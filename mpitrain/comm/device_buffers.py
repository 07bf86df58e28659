"""Handing tensor memory to MPI: host views, CUDA-aware detection, pinned staging.

CPU tensors go to MPI as numpy ``uint8`` views of their memory (any dtype,
bfloat16 included; no copy). CUDA tensors go to MPI directly (mpi4py reads
``__dlpack__``/``__cuda_array_interface__``) when the MPI library is CUDA-aware;
otherwise ``AllReducer`` copies them into a reused pinned host buffer, reduces
there and copies back (``PinnedStager``).

CUDA-awareness is detected once: the environment variable
``MPITRAIN_CUDA_AWARE=1|0`` wins; else the library is asked
(``MPIX_GPU_query_support`` in MPICH >= 4, ``MPIX_Query_cuda_support`` in Open MPI);
anything else counts as not CUDA-aware.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import torch

ENV_CUDA_AWARE = "MPITRAIN_CUDA_AWARE"


def is_device_tensor(tensor: torch.Tensor) -> bool:
    """True for memory MPI cannot read as host memory (CUDA and other accelerators)."""
    return not tensor.is_cpu


def mpi_bytes(tensor: torch.Tensor):
    """A byte-typed, sliceable buffer over the tensor's memory (contiguous tensors only)."""
    flat = tensor.reshape(-1).view(torch.uint8)
    if is_device_tensor(tensor):
        return flat
    return flat.numpy()


def synchronize(tensor: torch.Tensor) -> None:
    """Wait for queued device work on ``tensor`` before MPI reads its memory."""
    if tensor.device.type == "cuda":
        torch.cuda.current_stream(tensor.device).synchronize()


def _query_library() -> bool:
    names = [None, ctypes.util.find_library("mpi")]
    try:
        from mpi4py import MPI
        names.insert(0, MPI.__file__)
    except ImportError:  # pragma: no cover - mpi4py is a dependency
        pass
    for name in names:
        try:
            lib = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        if hasattr(lib, "MPIX_Query_cuda_support"):
            return bool(lib.MPIX_Query_cuda_support())
        if hasattr(lib, "MPIX_GPU_query_support"):
            supported = ctypes.c_int(0)
            if lib.MPIX_GPU_query_support(0, ctypes.byref(supported)) == 0:  # 0 = MPIX_GPU_SUPPORT_CUDA
                return bool(supported.value)
    return False


@functools.lru_cache(maxsize=1)
def cuda_aware() -> bool:
    """Whether the MPI library accepts CUDA device pointers (see module docstring)."""
    env = os.environ.get(ENV_CUDA_AWARE)
    if env is not None and env.strip() != "":
        return env.strip().lower() not in ("0", "false", "no")
    return _query_library()


def needs_staging(tensor: torch.Tensor) -> bool:
    """Device memory that this MPI cannot read directly."""
    return is_device_tensor(tensor) and not cuda_aware()


class PinnedStager:
    """A reused (pinned, when an accelerator exists) host buffer per dtype, grown on demand."""

    def __init__(self):
        self._bufs: dict[torch.dtype, torch.Tensor] = {}
        self.allocations = 0

    def host_buffer(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self._bufs.get(dtype)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(max(numel, 1), dtype=dtype)
            if torch.cuda.is_available():
                buf = buf.pin_memory()
            self._bufs[dtype] = buf
            self.allocations += 1
        return buf[:numel]

    def stage_in(self, tensor: torch.Tensor) -> torch.Tensor:
        """Copy a device tensor to the host buffer; returns the host view."""
        host = self.host_buffer(tensor.numel(), tensor.dtype)
        host.copy_(tensor.reshape(-1))
        return host

    @staticmethod
    def stage_out(host: torch.Tensor, tensor: torch.Tensor) -> None:
        """Copy the reduced host values back into the device tensor."""
        tensor.copy_(host.view(tensor.shape))
