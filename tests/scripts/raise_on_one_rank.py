"""Rank 1 raises while every other rank waits in a collective; run_or_abort must end the job."""
import sys

from mpi4py import MPI

from ringtrain.fault import run_or_abort


def main():
    if MPI.COMM_WORLD.Get_rank() == 1:
        raise RuntimeError("deliberate failure on rank 1")
    MPI.COMM_WORLD.Barrier()  # would wait forever without the abort
    return 0


sys.exit(run_or_abort(main))
