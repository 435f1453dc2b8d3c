"""Pipelined chain broadcast: segments flow from the root around the ring.

Rank ``root + i`` receives each segment from ``root + i - 1`` and forwards it
to ``root + i + 1`` while the next segment is arriving, so for large buffers
the time approaches one buffer's transfer time whatever the world size.
"""
import numpy as np
from mpi4py import MPI

from ..constants import TAG_CHAIN_BROADCAST
from . import waiting
from .layout import segment_bounds



def chain_broadcast(comm: MPI.Comm, a: np.ndarray, root: int, segment_bytes: int) -> None:
    """Copy ``a`` from ``root`` to every rank.

    >>> x = np.ones(3); chain_broadcast(MPI.COMM_SELF, x, 0, 1 << 20)
    """
    n, r = comm.Get_size(), comm.Get_rank()
    if n == 1 or a.size == 0:
        return
    pos = (r - root) % n
    prev, nxt = (r - 1) % n, (r + 1) % n
    nseg = max(1, -(-a.nbytes // segment_bytes))
    segs = [segment_bounds(0, a.size, nseg, k) for k in range(nseg)]
    forward = pos < n - 1
    if pos == 0:
        waiting.wait_all([comm.Isend(a[lo:hi], nxt, TAG_CHAIN_BROADCAST) for lo, hi in segs])
        return
    sends = []
    pending = comm.Irecv(a[slice(*segs[0])], prev, TAG_CHAIN_BROADCAST)
    for k, (lo, hi) in enumerate(segs):
        following = comm.Irecv(a[slice(*segs[k + 1])], prev, TAG_CHAIN_BROADCAST) if k + 1 < nseg else None
        try:
            pending.Wait()
        except MPI.Exception:  # a dead peer: no request may be freed while active (waiting.abandon)
            waiting.abandon([pending, following, *sends])
            raise
        if forward:
            sends.append(comm.Isend(a[lo:hi], nxt, TAG_CHAIN_BROADCAST))
        pending = following
    waiting.wait_all(sends)
