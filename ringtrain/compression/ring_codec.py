"""A ring allreduce whose hops carry compressed segments (for payloads that add up).

Reduce-scatter: each rank keeps a float32 accumulator; at every hop it sends
its partial chunk encoded by the codec and adds the decoded chunk it receives.
The owner divides by the world size and encodes its chunk once more; the
allgather then moves those encoded values, which every rank decodes the same
way, so all ranks end with the same bits. One rounding per hop is the price.

A codec provides ``wire_dtype``, ``prepare(x, comm)`` (collective set-up, such
as agreeing on scales), and ``encode(values, lo, hi, summed, out)`` /
``decode(wire, lo, hi, summed, out)`` for the element range ``[lo, hi)`` of a
partial sum over ``summed`` ranks (``summed=1`` for the final mean).
"""
import numpy as np
from mpi4py import MPI

from ..constants import TAG_CODEC_GATHER, TAG_CODEC_REDUCE
from ..collectives.layout import chunk_bounds
from .base import all_finite



def ring_mean(codec, x: np.ndarray, comm: MPI.Comm) -> np.ndarray:
    """Mean over ranks of ``x`` (float32), compressed on every hop."""
    acc = np.array(x, dtype=np.float32)
    codec.prepare(acc, comm)
    wire = np.empty(x.size, dtype=codec.wire_dtype)
    out = _ring(codec, acc, wire, comm)
    # One pass, on the result only: a NaN or inf here came from some rank's
    # gradient, a value beyond the wire type's range, or a damaged segment;
    # none may be averaged in silently.
    if not all_finite(out):
        raise ValueError(f"{codec.name}: the compressed average has NaN or inf values (a non-finite gradient "
                         "on some rank, a value beyond the wire type's range, or a corrupted segment)")
    return out


def _ring(codec, acc: np.ndarray, wire: np.ndarray, comm: MPI.Comm) -> np.ndarray:
    n, r = comm.Get_size(), comm.Get_rank()
    if n == 1:
        codec.encode(acc, 0, acc.size, 1, wire)
        return codec.decode(wire, 0, acc.size, 1, acc)
    left, right = (r - 1) % n, (r + 1) % n
    bounds = [chunk_bounds(acc.size, n, c) for c in range(n)]
    largest = bounds[0][1] - bounds[0][0]
    inbox = np.empty(largest, dtype=codec.wire_dtype)
    decoded = np.empty(largest, dtype=np.float32)
    # Reduce-scatter: at step s the chunk sent holds the sum of s + 1 ranks;
    # the last chunk received (step n-2) is chunk r, as in ring.py.
    for s in range(n - 1):
        slo, shi = bounds[(r - s - 1) % n]
        rlo, rhi = bounds[(r - s - 2) % n]
        codec.encode(acc[slo:shi], slo, shi, s + 1, wire[slo:shi])
        comm.Sendrecv(wire[slo:shi], right, TAG_CODEC_REDUCE, inbox[:rhi - rlo], left, TAG_CODEC_REDUCE)
        acc[rlo:rhi] += codec.decode(inbox[:rhi - rlo], rlo, rhi, s + 1, decoded[:rhi - rlo])
    lo, hi = bounds[r]
    acc[lo:hi] /= n
    codec.encode(acc[lo:hi], lo, hi, 1, wire[lo:hi])
    for s in range(n - 1):
        slo, shi = bounds[(r - s) % n]
        rlo, rhi = bounds[(r - s - 1) % n]
        comm.Sendrecv(wire[slo:shi], right, TAG_CODEC_GATHER, wire[rlo:rhi], left, TAG_CODEC_GATHER)
    return codec.decode(wire, 0, acc.size, 1, acc)
