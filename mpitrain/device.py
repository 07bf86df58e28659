"""Choose each rank's device and CPU thread count."""
from __future__ import annotations

import os

import torch


def cores_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_threads(node_size: int, cores_on_node: int | None = None, cores_bound: int | None = None) -> int:
    """Threads per rank so that the ranks of a node don't oversubscribe its cores:
    cores on the node // ranks on the node, at least 1, and no more than the cores
    this process is bound to (Slurm's --cpus-per-task, a launcher's binding)."""
    node_cores = cores_on_node if cores_on_node is not None else (os.cpu_count() or 1)
    bound = cores_bound if cores_bound is not None else cores_available()
    return max(1, min(bound, node_cores // max(1, node_size)))


def choose_device(preference: str, node_rank: int, cuda_count: int | None = None) -> torch.device:
    """`preference` is 'auto', 'cpu' or 'cuda'. With CUDA the device is the
    node-local rank modulo the visible GPUs."""
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if preference == "cpu" or (preference == "auto" and cuda_count == 0):
        return torch.device("cpu")
    if cuda_count == 0:
        raise RuntimeError("runtime.device = 'cuda' but no CUDA device is visible on this node; "
                           "use device = 'auto' or 'cpu'")
    return torch.device("cuda", node_rank % cuda_count)


def bind(preference: str, node_rank: int, node_size: int, threads: int = 0) -> torch.device:
    """Select the device for this rank and set torch's thread count on CPU."""
    device = choose_device(preference, node_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(threads if threads > 0 else cpu_threads(node_size))
    return device
