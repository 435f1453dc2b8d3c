"""Bucketed gradient averaging that overlaps communication with backward, and ZeRO's sharded optimizer."""
from .buckets import Bucket, assign_buckets
from .gradient_reducer import GradientReducer
from .onebit_adam import OneBitAdam
from .zero_optimizer import ZeroOptimizer

__all__ = ["Bucket", "GradientReducer", "OneBitAdam", "ZeroOptimizer", "assign_buckets"]
