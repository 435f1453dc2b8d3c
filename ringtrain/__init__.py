"""ringtrain: data-parallel PyTorch training over MPI, with ring collectives and gradient compression.

>>> import ringtrain, numpy as np
>>> ringtrain.allreduce(np.ones(4), op="mean")          # doctest: +SKIP
"""
from ._version import __version__
from .collectives import (ALGORITHMS, CollectiveMismatchError, allgather, allreduce, broadcast,
                          choose_algorithm, chunk_bounds, reduce_scatter)

__all__ = ["ALGORITHMS", "CollectiveMismatchError", "__version__", "allgather", "allreduce",
           "broadcast", "choose_algorithm", "chunk_bounds", "reduce_scatter"]
