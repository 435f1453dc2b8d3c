"""Gradient compression: composable compressors with error feedback, and lz4 on the wire.

>>> from ringtrain import compression
>>> c = compression.get("ef+topk:ratio=0.01")
"""
from .base import Compressor
from .casts import Cast16
from .error_feedback import ErrorFeedback
from .int8 import Int8
from .lz4_frame import LZ4
from .onebit import OneBit
from .powersgd import PowerSGD
from .registry import NAMES, get
from .topk import TopK

__all__ = ["NAMES", "Cast16", "Compressor", "ErrorFeedback", "Int8", "LZ4", "OneBit", "PowerSGD", "TopK", "get"]
