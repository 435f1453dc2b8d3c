"""The parameter-server baseline: every rank sends to rank 0, which sums and sends back.

This is the topology of the classic TensorFlow parameter-server design. Rank 0
moves ``2 (size - 1)`` whole buffers through one link while the ring moves about
two buffers per rank, which is what the benchmark shows. Kept as a baseline, not
for use.
"""
import numpy as np
from mpi4py import MPI

from ..constants import TAG_PARAMETER_SERVER
from . import waiting, workspace



def ps_allreduce(comm: MPI.Comm, a: np.ndarray) -> None:
    """Sum ``a`` in place across ``comm`` through rank 0.

    >>> x = np.ones(3); ps_allreduce(MPI.COMM_SELF, x); x
    array([1., 1., 1.])
    """
    n, r = comm.Get_size(), comm.Get_rank()
    if n == 1 or a.size == 0:
        return
    if r != 0:
        comm.Send(a, 0, TAG_PARAMETER_SERVER)
        comm.Recv(a, 0, TAG_PARAMETER_SERVER)
        return
    tmp = workspace.get("ps", a.dtype, a.size)
    # Sum in rank order so the result does not depend on arrival order.
    for src in range(1, n):
        comm.Recv(tmp, src, TAG_PARAMETER_SERVER)
        np.add(a, tmp, out=a)
    waiting.wait_all([comm.Isend(a, dst, TAG_PARAMETER_SERVER) for dst in range(1, n)])
