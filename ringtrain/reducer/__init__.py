"""Bucketed gradient averaging that overlaps communication with backward.

The optimizers that step beside it live in ringtrain/optim/; they are importable from here too, as before.
"""
from ..optim import DGCAdam, OneBitAdam, ZeroOptimizer
from .buckets import Bucket, assign_buckets
from .gradient_reducer import GradientReducer

__all__ = ["Bucket", "DGCAdam", "GradientReducer", "OneBitAdam", "ZeroOptimizer", "assign_buckets"]
