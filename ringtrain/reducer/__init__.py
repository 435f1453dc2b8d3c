"""Bucketed gradient averaging that overlaps communication with backward."""
from .buckets import Bucket, assign_buckets
from .gradient_reducer import GradientReducer

__all__ = ["Bucket", "GradientReducer", "assign_buckets"]
