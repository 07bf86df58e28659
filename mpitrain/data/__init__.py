"""Data loading helpers: per-epoch sharding for data parallelism."""
from mpitrain.data.sharding import epoch_indices, valid_mask

__all__ = ["epoch_indices", "valid_mask"]
