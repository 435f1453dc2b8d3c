"""The ring-codec contract: what a compressor provides so that its encoded values are summed on the ring.

A ``RingCodec`` (casts.Cast16, int8.Int8) declares ``Path.RING_CODEC``: its
``allreduce_mean`` runs the ring's reduce-scatter with every segment encoded
just before it is sent and decoded just before it is added
(collectives/codec_ring.py holds that algorithm), and ZeRO reduce-scatters
through the same contract (``codec_reduce_scatter_mean``). ``compress`` and
``decompress`` still work on one rank's values, for benchmarks and for
``ErrorFeedback``, which gathers.

A subclass gives ``wire_dtype`` and the three methods below, each on a
slice ``[lo, hi)`` of the buffer being reduced, so that per-element state
(int8's shared scales) can be indexed by position.
"""
import numpy as np
from mpi4py import MPI

from ..collectives.codec_ring import codec_mean
from .base import Compressor, Path


class RingCodec(Compressor):
    """A compressor whose encoded values add up hop by hop; see the module's docstring.

    >>> from ringtrain.compression import Cast16
    >>> codec = Cast16("bfloat16")
    >>> codec.path is Path.RING_CODEC and codec.wire_dtype is np.uint16
    True
    """

    path = Path.RING_CODEC
    wire_dtype: type
    """The numpy dtype of one encoded element (uint16 for 16-bit floats, int8)."""

    def prepare(self, x: np.ndarray, comm: MPI.Comm) -> None:
        """Collective set-up before a reduction of ``x``, such as agreeing on scales; nothing by default."""

    def encode(self, values: np.ndarray, lo: int, hi: int, summed: int, out: np.ndarray) -> None:
        """Encode ``values``, elements ``[lo, hi)`` of a partial sum over ``summed`` ranks, into ``out``."""
        raise NotImplementedError

    def decode(self, wire: np.ndarray, lo: int, hi: int, summed: int, out: np.ndarray) -> np.ndarray:
        """Decode ``wire`` (elements ``[lo, hi)``, a sum over ``summed`` ranks) into float32 ``out``; returns it."""
        raise NotImplementedError

    def allreduce_mean(self, x: np.ndarray, comm: MPI.Comm) -> np.ndarray:
        return codec_mean(self, np.asarray(x, dtype=np.float32), comm)
