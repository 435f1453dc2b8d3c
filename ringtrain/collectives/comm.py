"""The private communicator the collectives talk on, and the argument handshake.

A library that sends point-to-point messages on the user's communicator could
match the user's own messages. Like other MPI libraries, ringtrain duplicates
each communicator once, on first use, and caches the duplicate as an MPI
attribute, so the duplicate is freed with the communicator and never confused
with a later one that reuses its handle.
"""
import numpy as np
from mpi4py import MPI

_KEYVAL = MPI.Comm.Create_keyval()


def private(comm: MPI.Comm) -> MPI.Comm:
    """The duplicate of ``comm`` that ringtrain's own messages use.

    Collective on first use for a communicator (it calls MPI_Comm_dup).
    """
    dup = comm.Get_attr(_KEYVAL)
    if dup is None:
        dup = comm.Dup()
        comm.Set_attr(_KEYVAL, dup)
    return dup


class CollectiveMismatchError(ValueError):
    """Ranks called the same collective with buffers or arguments that disagree."""


def handshake(comm: MPI.Comm, what: str, count: int, code: int, describe) -> None:
    """Raise CollectiveMismatchError on every rank unless all ranks pass the same (count, code).

    One allreduce of four int64 with MAX: the maximum of ``s`` and of ``-s``
    agree (``max(s) == -max(-s) == min(s)``) only if every rank has the same
    ``s``. Only on a mismatch are the ranks' ``describe()`` texts gathered, so the
    message can name each rank and what it passed.

    >>> handshake(MPI.COMM_SELF, "allreduce", 4, 1, lambda: "4 x float32")
    """
    both = np.array((count, code, -count, -code), dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, both, MPI.MAX)
    hi_count, hi_code, neg_lo_count, neg_lo_code = both.tolist()
    if hi_count == -neg_lo_count and hi_code == -neg_lo_code:
        return
    # Error path only: gathering Python strings pickles, which is fine here.
    described = comm.allgather(describe())
    groups: dict[str, list[int]] = {}
    for rank, d in enumerate(described):
        groups.setdefault(d, []).append(rank)
    parts = "; ".join(f"rank{'s' if len(r) > 1 else ''} {_ranks(r)}: {d}" for d, r in groups.items())
    raise CollectiveMismatchError(f"ringtrain.{what}: ranks passed different arguments ({parts}); "
                                  "every rank must pass the same element count, dtype and options")


def _ranks(ranks: list[int]) -> str:
    if len(ranks) > 3 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(map(str, ranks))
