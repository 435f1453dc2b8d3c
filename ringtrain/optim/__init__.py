"""ringtrain's optimizers: torch optimizers that step alongside a GradientReducer.

- ``OneBitAdam`` and ``DGCAdam``: AdamW for a warm-up, then a frozen variance
  and the momentum averaged compressed, by signs or by DGC's top-k;
- ``ZeroOptimizer`` (zero/): any elementwise torch optimizer over this rank's
  shard of the parameters, with ZeRO's gradient shards and sharded checkpoints.

Each is a ``torch.optim.Optimizer`` (torch's LR schedulers work on it) and a
``ReducerOptimizer`` (interface.py): what it asks of the reducer, and what the
trainer and checkpoints ask of it, are declared there.

    reducer = ringtrain.GradientReducer(model)
    optimizer = ringtrain.OneBitAdam(reducer, model.parameters(), lr=1e-3, warmup=100)
"""
from .dgc_adam import DGCAdam
from .frozen_variance_adam import FrozenVarianceAdam
from .interface import AveragingReducer, ReducerOptimizer
from .onebit_adam import OneBitAdam
from .zero.optimizer import ZeroOptimizer

__all__ = ["AveragingReducer", "DGCAdam", "FrozenVarianceAdam", "OneBitAdam", "ReducerOptimizer", "ZeroOptimizer"]
