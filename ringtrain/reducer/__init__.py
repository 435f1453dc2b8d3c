"""Bucketed gradient averaging that overlaps communication with backward, and ZeRO's sharded optimizer."""
from .buckets import Bucket, assign_buckets
from .dgc_adam import DGCAdam
from .gradient_reducer import GradientReducer
from .onebit_adam import OneBitAdam
from .zero_optimizer import ZeroOptimizer

__all__ = ["Bucket", "DGCAdam", "GradientReducer", "OneBitAdam", "ZeroOptimizer", "assign_buckets"]
