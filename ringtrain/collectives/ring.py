"""Pipelined ring reduce-scatter and allgather on a flat numpy buffer.

Both phases are ``size - 1`` ring steps. At step ``s`` rank ``r`` sends a chunk
to ``r + 1`` and receives one from ``r - 1``. Each chunk is cut into segments
and the steps are flattened into one stream of (step, segment) items, so a
segment is forwarded at step ``s + 1`` as soon as it was received (and reduced)
at step ``s``, without waiting for the rest of its chunk. The receive of the next
segment is posted before the current one is reduced (double buffering), so an
MPI with asynchronous progress (or a NIC) moves it while numpy adds.

Each item waits for its own send before the next is posted. MPICH without an
async progress thread moves large messages only inside MPI calls, and many
outstanding rendezvous sends made the ring 1.5x slower in measurements here.
The reduce-scatter segment is cache-sized so the received segment is still in
L2 when numpy adds it; the allgather, which only copies, uses larger segments
to pay fewer per-message costs.

Chunk ownership follows ``layout.chunk_bounds``: after the reduce-scatter rank
``r`` holds the full reduction of chunk ``r``.

With a ``codec`` (codec_ring.py), the reduce-scatter keeps the same schedule
but each segment crosses the wire encoded: it is encoded into ``wire`` just
before its send and the received one is decoded just before it is added.
"""
import numpy as np
from mpi4py import MPI

from ..constants import TAG_RING_GATHER, TAG_RING_REDUCE
from . import traffic, waiting, workspace
from .layout import chunk_bounds, segment_bounds, segment_count

# Segment sizes in bytes, from `ringtrain bench allreduce` sweeps on 2 ranks
# (256K-512K for the reduce were within noise of each other; below 128K the
# per-message cost shows).
REDUCE_SEGMENT_BYTES = 512 << 10
GATHER_SEGMENT_BYTES = 4 << 20


def ring_reduce_scatter(comm: MPI.Comm, a: np.ndarray, segment_bytes: int = REDUCE_SEGMENT_BYTES, *,
                        codec=None, wire: np.ndarray | None = None, bounds=None) -> tuple[int, int]:
    """Sum ``a`` across ranks chunk-wise; returns the bounds of this rank's reduced chunk.

    Only ``a[lo:hi]`` holds the full sum afterwards; other chunks hold partial sums.
    With a ``codec``, ``a`` is float32 and segments travel encoded through ``wire``
    (``codec.wire_dtype``, the size of ``a``). ``bounds`` gives each rank's
    ``(lo, hi)`` chunk, consecutive and covering ``a``, where the balanced
    layout will not do (chunks cut at parameter boundaries); every rank passes the same.

    >>> ring_reduce_scatter(MPI.COMM_SELF, np.ones(3))
    (0, 3)
    """
    n, r = comm.Get_size(), comm.Get_rank()
    # Step s sends chunk r-s-1 and receives chunk r-s-2, so the last chunk
    # received (s = n-2) is chunk r: every rank ends owning its own chunk.
    _ring(comm, a, first_send=(r - 1) % n, segment_bytes=segment_bytes, reduce=True, codec=codec, wire=wire,
          bounds=bounds)
    return chunk_bounds(a.size, n, r) if bounds is None else bounds[r]


def ring_allgather(comm: MPI.Comm, a: np.ndarray, segment_bytes: int = GATHER_SEGMENT_BYTES, *,
                   bounds=None) -> None:
    """Fill every chunk of ``a`` from its owner; rank ``r`` contributes ``a[chunk r]`` (or ``a[slice(*bounds[r])]``).

    >>> ring_allgather(MPI.COMM_SELF, np.ones(3))
    """
    _ring(comm, a, first_send=comm.Get_rank(), segment_bytes=segment_bytes, reduce=False, bounds=bounds)


def _ring(comm, a, first_send, segment_bytes, reduce, codec=None, wire=None, bounds=None):
    n = comm.Get_size()
    if n == 1 or a.size == 0:
        return
    r = comm.Get_rank()
    left, right = (r - 1) % n, (r + 1) % n
    if bounds is None:
        nseg = segment_count(a.size, n, segment_bytes // a.itemsize)
        bounds = [chunk_bounds(a.size, n, c) for c in range(n)]
        largest = bounds[0][1]  # chunk 0 is never smaller than another
    else:  # the same count for every chunk, from the largest, so that all ranks agree
        largest = max(hi - lo for lo, hi in bounds)
        nseg = max(1, -(-largest // max(1, segment_bytes // a.itemsize)))
    tag = TAG_RING_REDUCE if reduce else TAG_RING_GATHER
    if reduce:
        seg_max = -(-largest // nseg)
        on_wire = a.dtype if codec is None else codec.wire_dtype
        scratch = workspace.get("ring", on_wire, 2 * seg_max).reshape(2, seg_max)
        if codec is not None:
            decoded = workspace.get("ring-decoded", np.float32, seg_max)

    def item(i):
        # (send range, receive range, step) of the i-th (step, segment) item.
        s, k = divmod(i, nseg)
        send = bounds[(first_send - s) % n]
        recv = bounds[(first_send - s - 1) % n]
        return segment_bounds(*send, nseg, k), segment_bounds(*recv, nseg, k), s

    def post_recv(i, rng):
        lo, hi = rng
        target = scratch[i % 2, : hi - lo] if reduce else a[lo:hi]
        return comm.Irecv(target, left, tag)

    nitems = (n - 1) * nseg
    cur = item(0)
    pending = post_recv(0, cur[1])
    for i in range(nitems):
        (slo, shi), (rlo, rhi), s = cur
        # The segment sent now was fully received (and reduced) at item i - nseg.
        if codec is None:
            send = comm.Isend(a[slo:shi], right, tag)
            traffic.sent(a[slo:shi].nbytes)
        else:  # at step s the segment holds the sum of s + 1 ranks
            codec.encode(a[slo:shi], slo, shi, s + 1, wire[slo:shi])
            send = comm.Isend(wire[slo:shi], right, tag)
            traffic.sent(wire[slo:shi].nbytes)
        if i + 1 < nitems:
            nxt = item(i + 1)
            following = post_recv(i + 1, nxt[1])
        try:
            waiting.wait_all((pending, send))  # which abandons them if it raises (a dead peer)
        except MPI.Exception:
            waiting.abandon([following] if i + 1 < nitems else [])  # and the receive already posted
            raise
        if codec is not None:
            a[rlo:rhi] += codec.decode(scratch[i % 2, : rhi - rlo], rlo, rhi, s + 1, decoded[: rhi - rlo])
        elif reduce:
            np.add(a[rlo:rhi], scratch[i % 2, : rhi - rlo], out=a[rlo:rhi])
        if i + 1 < nitems:
            cur, pending = nxt, following
