"""ringtrain's optimizers: torch optimizers that step alongside a GradientReducer.

- ``OneBitAdam`` and ``DGCAdam``: AdamW for a warm-up, then a frozen variance
  and the momentum averaged compressed, by signs or by DGC's top-k;
- ``ZeroOptimizer`` (zero/): any elementwise torch optimizer over this rank's
  shard of the parameters, with ZeRO's gradient shards and sharded checkpoints.

    reducer = ringtrain.GradientReducer(model)
    optimizer = ringtrain.OneBitAdam(reducer, model.parameters(), lr=1e-3, warmup=100)
"""
from .dgc_adam import DGCAdam
from .onebit_adam import OneBitAdam
from .zero.optimizer import ZeroOptimizer

__all__ = ["DGCAdam", "OneBitAdam", "ZeroOptimizer"]
