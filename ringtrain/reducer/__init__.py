"""Bucketed gradient averaging that overlaps communication with backward, and ZeRO's sharded optimizer."""
from .buckets import Bucket, assign_buckets
from .gradient_reducer import GradientReducer
from .zero_optimizer import ZeroOptimizer

__all__ = ["Bucket", "GradientReducer", "ZeroOptimizer", "assign_buckets"]
