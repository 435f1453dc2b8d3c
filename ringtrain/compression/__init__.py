"""Gradient compression: composable compressors with error feedback, and lz4 on the wire.

>>> from ringtrain import compression
>>> c = compression.get("ef+topk:ratio=0.01")
>>> c.path                                   # error feedback gathers every rank's payload
<Path.GATHERED: 'gathered'>

Your own compressor: subclass ``Compressor`` and ``register`` it (ringtrain/examples/random_k.py).
"""
from .base import Compressor, Path
from .casts import Cast16
from .error_feedback import ErrorFeedback
from .int8 import Int8
from .lz4_frame import LZ4
from .onebit import OneBit
from .powersgd import PowerSGD
from .registry import NAMES, get, names, register, spec_of
from .ring_codec import RingCodec
from .topk import TopK

__all__ = ["NAMES", "Cast16", "Compressor", "ErrorFeedback", "Int8", "LZ4", "OneBit", "Path", "PowerSGD",
           "RingCodec", "TopK", "get", "names", "register", "spec_of"]
