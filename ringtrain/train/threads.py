"""How many compute threads torch gets per rank."""
import os

import torch
from mpi4py import MPI

from .. import environment


def set_torch_threads(comm: MPI.Comm) -> int:
    """Split this node's cores among the ranks on it, unless OMP_NUM_THREADS says otherwise.

    torch otherwise starts one thread per core in every rank, so 4 ranks on 2
    cores would run 8 compute threads fighting over 2 cores. Collective.
    """
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    ranks_here = node.Get_size()
    node.Free()
    threads = environment.value("OMP_NUM_THREADS")  # checked at start-up: 1 to 1024, or unset (None)
    if threads is None:
        threads = max(1, len(os.sched_getaffinity(0)) // ranks_here)
    torch.set_num_threads(threads)
    return threads
