"""Checkpoints in HDF5: atomic, exact on resume, loadable under any layout."""
