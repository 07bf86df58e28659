"""Slurm support: the allocation's environment, stop signals handled by
checkpoint-and-requeue, and batch scripts for `mpitrain submit`."""
