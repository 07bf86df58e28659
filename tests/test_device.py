import pytest
import torch

from mpitrain.device import choose_device, cpu_threads


def test_cpu_threads_split_node_cores():
    assert cpu_threads(node_size=4, cores_on_node=2, cores_bound=2) == 1
    assert cpu_threads(node_size=2, cores_on_node=2, cores_bound=2) == 1
    assert cpu_threads(node_size=1, cores_on_node=2, cores_bound=2) == 2
    assert cpu_threads(node_size=4, cores_on_node=64, cores_bound=64) == 16
    # a launcher that bound this rank to 8 cores caps it
    assert cpu_threads(node_size=2, cores_on_node=64, cores_bound=8) == 8
    assert cpu_threads(node_size=100, cores_on_node=8, cores_bound=8) == 1


def test_device_choice():
    assert choose_device("auto", node_rank=3, cuda_count=0) == torch.device("cpu")
    assert choose_device("cpu", node_rank=3, cuda_count=4) == torch.device("cpu")
    assert choose_device("auto", node_rank=3, cuda_count=4) == torch.device("cuda", 3)
    assert choose_device("auto", node_rank=5, cuda_count=4) == torch.device("cuda", 1)
    assert choose_device("cuda", node_rank=2, cuda_count=2) == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        choose_device("cuda", node_rank=0, cuda_count=0)
