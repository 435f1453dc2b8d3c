"""Helpers for multi-rank tests."""
import numpy as np
from mpi4py import MPI


def all_ranks_agree(ok: bool, comm=MPI.COMM_WORLD) -> bool:
    """True on every rank only if ``ok`` is true on every rank (one MIN allreduce)."""
    flag = np.array([1 if ok else 0], dtype=np.int32)
    comm.Allreduce(MPI.IN_PLACE, flag, op=MPI.MIN)
    return bool(flag[0])


def identical_across_ranks(a: np.ndarray, comm=MPI.COMM_WORLD) -> bool:
    """True on every rank if ``a`` has the same bytes on every rank."""
    raw = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
    lo, hi = raw.copy(), raw.copy()
    comm.Allreduce(MPI.IN_PLACE, lo, op=MPI.MIN)
    comm.Allreduce(MPI.IN_PLACE, hi, op=MPI.MAX)
    return all_ranks_agree(bool(np.array_equal(lo, hi)), comm)
