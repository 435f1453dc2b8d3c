"""The private communicator the collectives talk on, the lock that serializes them, and the argument handshake.

A library that sends point-to-point messages on the user's communicator could
match the user's own messages. Like other MPI libraries, ringtrain duplicates
each communicator once, on first use, and caches the duplicate as an MPI
attribute, so the duplicate is freed with the communicator and never confused
with a later one that reuses its handle.

Threads. Beside the duplicate the attribute keeps a ``Guard``: a lock that each
public collective holds from start to end, so that two collectives called on
one communicator by two threads never interleave their messages (the ring's
messages reuse the same tags; interleaved, they mix data or truncate). A lock
cannot make the pairing across ranks right, though: MPI pairs the collectives
on a communicator in call order, and with two threads per rank that order is
a race, so rank 0's thread A may meet rank 1's thread B. The handshake therefore
also carries the calling thread's name, and calls that meet from differently
named threads raise ConcurrentCollectiveError on every rank. Threads that need
collectives at the same time should each use their own communicator
(``comm.Dup()``); one thread per rank must have the same name on every rank.

The names are compared on every call, not only once a rank has seen a second
thread: the very first calls of two threads (w0 on rank 0, w1 on rank 1) meet
before either rank knows there will be a second one.
"""
import threading
import zlib

import numpy as np
from mpi4py import MPI

from .signature import SIGNATURE

_KEYVAL = MPI.Comm.Create_keyval()
# Held only while a Guard is attached, never across an MPI call: a lock held
# across a collective here would be a lock every communicator waits on.
_ATTACHING = threading.Lock()
_local = threading.local()  # this thread's name code, read at its first checked collective


class Guard:
    """What ringtrain keeps on one communicator: the lock its collectives hold, and its private duplicate."""

    __slots__ = ("lock", "dup")

    def __init__(self):
        self.lock = threading.RLock()
        """Held for the whole of each public collective; reentrant, so one collective may call another."""
        self.dup: MPI.Comm | None = None
        """The private duplicate (``private()``), made on first use."""


def guard(comm: MPI.Comm) -> Guard:
    """The Guard of ``comm``, attached on first use. Not collective.

    >>> with guard(MPI.COMM_SELF).lock:
    ...     pass
    """
    g = comm.Get_attr(_KEYVAL)
    if g is None:
        with _ATTACHING:  # two threads arriving at once must get the same lock
            g = comm.Get_attr(_KEYVAL)
            if g is None:
                g = Guard()
                comm.Set_attr(_KEYVAL, g)
    return g


def private(comm: MPI.Comm) -> MPI.Comm:
    """The duplicate of ``comm`` that ringtrain's own messages use.

    Collective on first use for a communicator (it calls MPI_Comm_dup).

    >>> private(MPI.COMM_SELF) is private(MPI.COMM_SELF)
    True
    """
    g = guard(comm)
    if g.dup is None:
        with g.lock:
            if g.dup is None:
                g.dup = comm.Dup()
    return g.dup


class CollectiveMismatchError(ValueError):
    """Ranks called the same collective with buffers or arguments that disagree."""


class ConcurrentCollectiveError(CollectiveMismatchError):
    """Several threads share a communicator, and one collective met calls from different threads."""


def handshake(comm: MPI.Comm, what: str, count: int, code: int, describe, held: Guard | None = None) -> None:
    """Raise CollectiveMismatchError on every rank unless all ranks pass the same (count, code).

    One allreduce of four int64 with MAX: the maximum of ``s`` and of ``-s``
    agree (``max(s) == -max(-s) == min(s)``) only if every rank has the same
    ``s``: the count, and the code with the calling thread's name folded in
    (its crc32, the same on every rank unlike Python's salted hash(), in the
    signature's ``thread`` slot: four numbers cost less to build than six).
    A collective's code (signature.SIGNATURE.pack) leaves that slot empty, so
    the name fills it exactly; another caller's code, such as the reducer's
    layout hash, is XORed with it. Only on a mismatch are the ranks'
    ``describe()`` texts and thread names gathered; differing names raise
    ConcurrentCollectiveError (a CollectiveMismatchError), naming each rank's thread.
    ``held``: the caller's Guard of ``comm``, whose lock it holds; otherwise it is taken here.

    >>> handshake(MPI.COMM_SELF, "allreduce", 4, 1, lambda: "4 x float32")
    """
    if held is None:
        g = guard(comm)
        with g.lock:
            return handshake(comm, what, count, code, describe, g)
    name = getattr(_local, "name", None)  # cached: the hot path must stay short (a thread's name rarely changes)
    if name is None:
        name = _local.name = SIGNATURE.pack(thread=zlib.crc32(threading.current_thread().name.encode()))
    signed = code ^ name  # stays in int64: name < 2**63, and a negative code keeps its sign
    s = np.array((count, signed, -count, -signed), dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, s, MPI.MAX)
    hi_count, hi_signed, neg_lo_count, neg_lo_signed = s.tolist()
    if hi_count == -neg_lo_count and hi_signed == -neg_lo_signed:
        return
    # Error path only: gathering Python strings pickles, which is fine here.
    thread = threading.current_thread().name
    described = comm.allgather((thread, what, describe()))
    calls = {w for _, w, _ in described}  # more than one where different collectives met: name each
    described = [(t, d if len(calls) == 1 else f"{w}, {d}") for t, w, d in described]
    if len({t for t, _ in described}) == 1:
        raise CollectiveMismatchError(f"ringtrain.{what}: ranks passed different arguments "
                                      f"({_per_rank([d for _, d in described])}); "
                                      "every rank must pass the same element count, dtype and options")
    raise ConcurrentCollectiveError(
        f"ringtrain.{what}: this call met calls from different threads "
        f"({_per_rank([f'thread {t!r}, {d}' for t, d in described])}); collectives on a communicator pair up in "
        "call order, which is a race between threads — use one communicator per thread: comm.Dup(), made on every "
        "rank in the same order; where each rank calls from one thread, give it the same name on every rank")


def _per_rank(described: list[str]) -> str:
    groups: dict[str, list[int]] = {}
    for rank, d in enumerate(described):
        groups.setdefault(d, []).append(rank)
    return "; ".join(f"rank{'s' if len(r) > 1 else ''} {_ranks(r)}: {d}" for d, r in groups.items())


def _ranks(ranks: list[int]) -> str:
    if len(ranks) > 3 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(map(str, ranks))
