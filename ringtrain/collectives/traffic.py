"""Bytes a thread sends, counted where ringtrain's collectives send them.

Inside ``counting(counter)`` every message this thread hands to MPI through
ringtrain adds its size to ``counter[0]``: the ring's segments (encoded ones
at their wire size), the node-aware fold, and ringtrain's calls of native
collectives, which count the bytes their algorithm sends per rank: for an
allreduce of S bytes over n ranks 2(n-1)/n S (the ring and MPICH's large-message
reduce-scatter plus allgather), for an allgather (n-1) times what this rank
contributes. Payload bytes: frame and protocol headers are not counted. The
gradient reducer reports the sum per step as ``wire_bytes``.
"""
import contextlib
import threading

_local = threading.local()


@contextlib.contextmanager
def counting(counter: list):
    """Add the bytes this thread sends inside the block to ``counter[0]``."""
    previous = getattr(_local, "counter", None)
    _local.counter = counter
    try:
        yield
    finally:
        _local.counter = previous


def current() -> list | None:
    """This thread's counter, or None when nothing counts (then callers skip even sizing their message)."""
    return getattr(_local, "counter", None)


def sent(nbytes: int) -> None:
    counter = getattr(_local, "counter", None)
    if counter is not None:
        counter[0] += int(nbytes)
