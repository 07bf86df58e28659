"""Data parallelism: gradient averaging across replicas."""
from mpitrain.dp.grad_sync import GradientAverager

__all__ = ["GradientAverager"]
