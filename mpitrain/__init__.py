"""mpitrain: MPI-native data- and pipeline-parallel training for PyTorch."""

__version__ = "0.1.0"
