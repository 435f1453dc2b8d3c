"""ringtrain: data-parallel PyTorch training over MPI, with ring collectives and gradient compression.

>>> import ringtrain, numpy as np
>>> ringtrain.allreduce(np.ones(4), op="mean")          # doctest: +SKIP
"""
from ._version import __version__
from .collectives import (ALGORITHMS, CollectiveMismatchError, ConcurrentCollectiveError, allgather, allreduce,
                          broadcast, choose_algorithm, chunk_bounds, owned_bounds, reduce_scatter)



def __getattr__(name):
    # The reducer and the optimizers need torch, which takes seconds to import: load them only when asked for.
    if name == "GradientReducer":
        from .reducer import GradientReducer
        return GradientReducer
    if name in ("DGCAdam", "OneBitAdam", "ZeroOptimizer"):
        from . import optim
        return getattr(optim, name)
    if name in ("Task", "TrainConfig", "fit"):  # (ringtrain.train is the subpackage; its train() stays there)
        from .train import Task, TrainConfig, fit
        return {"Task": Task, "TrainConfig": TrainConfig, "fit": fit}[name]
    raise AttributeError(f"module 'ringtrain' has no attribute {name!r}")


__all__ = ["ALGORITHMS", "CollectiveMismatchError", "ConcurrentCollectiveError", "GradientReducer", "Task",
           "TrainConfig", "__version__", "allgather", "allreduce", "broadcast", "choose_algorithm", "chunk_bounds",
           "fit", "owned_bounds", "reduce_scatter", "DGCAdam", "OneBitAdam", "ZeroOptimizer"]
