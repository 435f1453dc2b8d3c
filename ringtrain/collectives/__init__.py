"""Collectives on flat buffers, built on mpi4py's buffer interface (no pickling on the hot path)."""
from .api import ALGORITHMS, allgather, allreduce, broadcast, choose_algorithm, owned_bounds, reduce_scatter
from .comm import CollectiveMismatchError, ConcurrentCollectiveError
from .layout import chunk_bounds

__all__ = ["ALGORITHMS", "CollectiveMismatchError", "ConcurrentCollectiveError", "allgather", "allreduce",
           "broadcast", "choose_algorithm", "chunk_bounds", "owned_bounds", "reduce_scatter"]
