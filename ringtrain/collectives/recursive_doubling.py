"""Recursive-doubling allreduce: log2(p) exchanges of the whole buffer, for small messages.

For a world size that is not a power of two, the first ``2 * rem`` ranks pair
up (``rem = size - p``, ``p`` the largest power of two not above ``size``): each
even rank hands its buffer to the odd rank above it and waits for the result,
so ``p`` ranks do the doubling.

Every exchange adds two partial sums that both partners hold, and IEEE addition
is commutative, so partners compute the same bits and all ranks end bitwise
identical.
"""
import numpy as np
from mpi4py import MPI

from ..constants import TAG_RECURSIVE_DOUBLING
from . import workspace



def recursive_doubling_allreduce(comm: MPI.Comm, a: np.ndarray) -> None:
    """Sum ``a`` in place across ``comm``.

    >>> x = np.ones(3); recursive_doubling_allreduce(MPI.COMM_SELF, x); x
    array([1., 1., 1.])
    """
    n, r = comm.Get_size(), comm.Get_rank()
    if n == 1 or a.size == 0:
        return
    tmp = workspace.get("rd", a.dtype, a.size)
    p = 1 << (n.bit_length() - 1)
    rem = n - p
    if r < 2 * rem:
        if r % 2 == 0:
            comm.Send(a, r + 1, TAG_RECURSIVE_DOUBLING)
            comm.Recv(a, r + 1, TAG_RECURSIVE_DOUBLING)
            return
        comm.Recv(tmp, r - 1, TAG_RECURSIVE_DOUBLING)
        np.add(a, tmp, out=a)
        vrank = r // 2
    else:
        vrank = r - rem
    mask = 1
    while mask < p:
        vpeer = vrank ^ mask
        peer = 2 * vpeer + 1 if vpeer < rem else vpeer + rem
        comm.Sendrecv(a, peer, TAG_RECURSIVE_DOUBLING, tmp, peer, TAG_RECURSIVE_DOUBLING)
        np.add(a, tmp, out=a)
        mask <<= 1
    if r < 2 * rem:
        comm.Send(a, r - 1, TAG_RECURSIVE_DOUBLING)
