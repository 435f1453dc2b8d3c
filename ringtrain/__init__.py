"""ringtrain: data-parallel PyTorch training over MPI, with ring collectives and gradient compression.

>>> import ringtrain, numpy as np
>>> ringtrain.allreduce(np.ones(4), op="mean")          # doctest: +SKIP
"""
from importlib import import_module as _import_module

from ._version import __version__
from .collectives import (ALGORITHMS, CollectiveMismatchError, ConcurrentCollectiveError, allgather, allreduce,
                          broadcast, choose_algorithm, chunk_bounds, owned_bounds, reduce_scatter)
from .fault import Diverged, Preempted, UsageError  # what fit raises; already loaded by the collectives

# Loaded when first asked for, from the subpackage named: the reducer and the trainer need torch, which takes
# seconds to import. (``ringtrain.train`` is the subpackage; its train() stays there.)
_LAZY = {"DGCAdam": "optim", "GradientReducer": "reducer", "OneBitAdam": "optim", "ZeroOptimizer": "optim",
         "Task": "train", "TrainConfig": "train", "fit": "train"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(_import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ringtrain' has no attribute {name!r}")


def __dir__():
    """The loaded names and the lazy ones, so that ``ringtrain.<TAB>`` offers ``fit`` before it is imported.

    >>> import ringtrain
    >>> "GradientReducer" in dir(ringtrain)
    True
    """
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["ALGORITHMS", "CollectiveMismatchError", "ConcurrentCollectiveError", "DGCAdam", "Diverged",
           "GradientReducer", "OneBitAdam", "Preempted", "Task", "TrainConfig", "UsageError", "ZeroOptimizer",
           "__version__", "allgather", "allreduce", "broadcast", "choose_algorithm", "chunk_bounds", "fit",
           "owned_bounds", "reduce_scatter"]
