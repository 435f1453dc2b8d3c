"""The mean over ranks through a codec whose encoded values add up (fp16, bf16, int8).

The ring's reduce-scatter runs on its usual pipelined schedule (ring.py), with
each segment encoded just before it is sent and decoded just before it is
added, so every hop carries the codec's bytes and rounds once; the
accumulator stays float32. The owner divides its chunk by the world size and
encodes it once more, and the ordinary ring allgather then moves those encoded
values, which every rank decodes the same way: all ranks end with the same bits.

``codec`` is a ``ringtrain.compression.ring_codec.RingCodec`` (its contract is
there, beside ``Compressor``): ``wire_dtype``, ``prepare``, ``encode``, ``decode``.
"""
import numpy as np
from mpi4py import MPI

from .comm import private
from .ring import ring_allgather, ring_reduce_scatter


def codec_mean(codec, x: np.ndarray, comm: MPI.Comm) -> np.ndarray:
    """Mean over ranks of float32 ``x``, every hop compressed by ``codec``; returns a new array.

    Raises ValueError if the result is not finite: a NaN or inf came from some
    rank's gradient, a value beyond the wire type's range, or a damaged segment,
    and none may be averaged in silently (one pass, on the result only).
    """
    acc = np.array(x, dtype=np.float32)
    wire = np.empty(acc.size, dtype=codec.wire_dtype)
    _encoded_chunk(codec, acc, wire, comm)
    if comm.Get_size() > 1:
        ring_allgather(private(comm), wire)
    return _finite(codec, codec.decode(wire, 0, acc.size, 1, acc))


def codec_reduce_scatter_mean(codec, acc: np.ndarray, comm: MPI.Comm) -> tuple[int, int]:
    """``codec_mean``'s first half, in place on float32 ``acc``: returns this rank's ``(lo, hi)``, whose
    elements then hold exactly what ``codec_mean`` gives there (the owner's chunk, encoded and decoded once).

    For ZeRO: the rest of ``acc`` holds partial sums. ValueError if the chunk is not finite, as codec_mean.
    """
    wire = np.empty(acc.size, dtype=codec.wire_dtype)
    lo, hi = _encoded_chunk(codec, acc, wire, comm)
    _finite(codec, codec.decode(wire[lo:hi], lo, hi, 1, acc[lo:hi]))
    return lo, hi


def _encoded_chunk(codec, acc: np.ndarray, wire: np.ndarray, comm: MPI.Comm) -> tuple[int, int]:
    """The ring's reduce-scatter through ``codec`` on ``acc``; this rank's chunk, divided by the world size,
    encoded into ``wire[lo:hi]``. Returns ``(lo, hi)``: the whole buffer on one rank."""
    codec.prepare(acc, comm)
    n = comm.Get_size()
    lo, hi = 0, acc.size
    if n > 1:
        lo, hi = ring_reduce_scatter(private(comm), acc, codec=codec, wire=wire)
        acc[lo:hi] /= n
    codec.encode(acc[lo:hi], lo, hi, 1, wire[lo:hi])
    return lo, hi


def _finite(codec, values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(f"{codec.name}: the compressed average has NaN or inf values (a non-finite gradient "
                         "on some rank, a value beyond the wire type's range, or a corrupted segment)")
    return values
