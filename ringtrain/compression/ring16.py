"""A ring allreduce whose hops carry 16-bit segments.

Reduce-scatter: each rank keeps a float32 accumulator; at every hop it sends
its partial chunk rounded to 16 bits and adds the 16-bit chunk it receives.
The owner divides by the world size and rounds its chunk once more; the
allgather then moves those 16-bit values, which every rank widens the same
way, so all ranks end with the same bits. Wire bytes are half the float32
ring's; the price is one rounding per hop.
"""
import numpy as np
from mpi4py import MPI

from ..collectives.layout import chunk_bounds

_TAG = 61


def ring_mean_16bit(codec, x: np.ndarray, comm: MPI.Comm) -> np.ndarray:
    """Mean over ranks of ``x`` (float32), 16-bit on the wire; ``codec`` has encode/decode."""
    n, r = comm.Get_size(), comm.Get_rank()
    acc = x.astype(np.float32, copy=True)
    bits = np.empty(x.size, dtype=np.uint16)
    if n == 1:
        codec.encode(acc, bits)
        return codec.decode(bits, acc)
    left, right = (r - 1) % n, (r + 1) % n
    bounds = [chunk_bounds(x.size, n, c) for c in range(n)]
    largest = bounds[0][1] - bounds[0][0]
    inbox = np.empty(largest, dtype=np.uint16)
    widened = np.empty(largest, dtype=np.float32)
    # Reduce-scatter: the last chunk received (step n-2) is chunk r, as in ring.py.
    for s in range(n - 1):
        slo, shi = bounds[(r - s - 1) % n]
        rlo, rhi = bounds[(r - s - 2) % n]
        codec.encode(acc[slo:shi], bits[slo:shi])
        comm.Sendrecv(bits[slo:shi], right, _TAG, inbox[:rhi - rlo], left, _TAG)
        acc[rlo:rhi] += codec.decode(inbox[:rhi - rlo], widened[:rhi - rlo])
    lo, hi = bounds[r]
    acc[lo:hi] /= n
    codec.encode(acc[lo:hi], bits[lo:hi])
    # Allgather of the 16-bit owned chunks.
    for s in range(n - 1):
        slo, shi = bounds[(r - s) % n]
        rlo, rhi = bounds[(r - s - 1) % n]
        comm.Sendrecv(bits[slo:shi], right, _TAG + 1, bits[rlo:rhi], left, _TAG + 1)
    return codec.decode(bits, acc)
