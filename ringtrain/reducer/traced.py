"""A gathered compressor seen through the trace: its compress and decompress calls become spans.

The reducer averages a traced bucket through this wrapper instead of the
compressor itself, so the compressor is left as it is (its state, its
checkpoint) and tracing costs nothing when it is off. Only ``Path.GATHERED``
compressors are wrapped: the others encode inside the ring or the allreduce,
where the bucket's own span covers them.

>>> from ringtrain.compression import TopK
>>> from ringtrain.trace import NO_TRACE
>>> traced = TracedCompressor(TopK(k=1), NO_TRACE)
>>> traced.allreduce_mean(np.array([1, -3], np.float32), MPI.COMM_SELF)
array([ 0., -3.], dtype=float32)
"""
import numpy as np
from mpi4py import MPI

from ..compression.base import Compressor, Path, gather_mean


class TracedCompressor(Compressor):
    """``inner`` (a GATHERED compressor) with a span around each compress and decompress."""

    path = Path.GATHERED

    def __init__(self, inner: Compressor, trace):
        if inner.path is not Path.GATHERED:
            raise ValueError(f"TracedCompressor: {inner.name} takes the {inner.path.value} path, not the gathered one")
        self.inner, self.trace, self.name = inner, trace, inner.name

    def before_gather(self, comm: MPI.Comm) -> None:
        self.inner.before_gather(comm)

    def compress(self, x: np.ndarray):
        with self.trace.span("compress", "codec", codec=self.name):
            return self.inner.compress(x)

    def decompress(self, payload: np.ndarray, ctx) -> np.ndarray:
        with self.trace.span("decompress", "codec", codec=self.name):
            return self.inner.decompress(payload, ctx)

    def allreduce_mean(self, x: np.ndarray, comm: MPI.Comm) -> np.ndarray:
        return gather_mean(self, x, comm)
