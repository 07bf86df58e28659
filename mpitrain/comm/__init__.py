"""Collectives over mpi4py: the ring all-reduce and its algorithm dispatch."""
from mpitrain.comm.allreduce import AllReducer
from mpitrain.comm.ring import ring_allreduce_

__all__ = ["AllReducer", "ring_allreduce_"]
