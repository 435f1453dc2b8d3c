"""Rank 0 passes a buffer the collective refuses while the others pass a good one.

Run under plain mpiexec (no ``python -m mpi4py``, no run_or_abort): every rank
must raise and say so, none may wait forever. Prints one line per rank.
"""
import sys

import numpy as np
from mpi4py import MPI

import ringtrain

rank = MPI.COMM_WORLD.Get_rank()
kind, operation = sys.argv[1], sys.argv[2]
x = np.ones(10)
if rank == 0:
    if kind == "read-only":
        x.flags.writeable = False
    elif kind == "strided":
        x = np.ones(20)[::2]
    else:
        x = np.ones(10, np.int8)
call = {"allreduce": lambda: ringtrain.allreduce(x), "reduce_scatter": lambda: ringtrain.reduce_scatter(x),
        "allgather": lambda: ringtrain.allgather(x), "broadcast": lambda: ringtrain.broadcast(x)}[operation]
try:
    call()
    print(f"rank {rank}: returned", flush=True)
except (TypeError, ValueError) as e:
    print(f"rank {rank}: raised {type(e).__name__}: {e}", flush=True)
