"""How a thread waits for MPI: inside MPI (spinning), or politely (testing, then sleeping).

MPICH waits by polling its progress engine in a loop, so a thread blocked in
MPI_Wait or MPI_Allreduce keeps a core busy. That is the fastest way to wait
when each rank has a core to itself. The gradient reducer's communication
thread, though, waits beside backward on the same core: its spinning takes the
CPU that backward needs, and the overlap the buckets were made for does not
happen. Inside ``polite(seconds)`` the calling thread instead starts each
operation nonblocking (Isend, Irecv, Iallreduce, Iallgather) and polls it with
MPI_Testall, sleeping ``seconds`` between polls, which releases the core (and
the GIL) to backward. Other threads are unaffected: the setting is per thread.

MPICH's own knobs were read for the same purpose (``mpivars`` of the MPICH
5.0.2 wheel): MPIR_CVAR_POLLS_BEFORE_YIELD (sched_yield every 1000 polls),
MPIR_CVAR_CH4_PROGRESS_THROTTLE (usleep(1) after 4096 polls without progress)
and MPIR_CVAR_ASYNC_PROGRESS (one more thread that polls). benchmarks/README.md
compares them with this.
"""
import contextlib
import threading
import time

from mpi4py import MPI

from . import traffic

_local = threading.local()


@contextlib.contextmanager
def polite(seconds: float, urgent=None, spin: float = 0.0):
    """Inside this block, this thread's waits in ringtrain's collectives test and sleep ``seconds``; 0 spins.

    ``urgent()``, if given, is asked at each poll: while it is true the thread
    spins instead, because nobody needs the core (the reducer's main thread is
    itself blocked waiting for this thread). ``spin``: each wait polls without
    sleeping for its first ``spin`` seconds, so a short operation is seen done
    at once and only a long one sleeps.
    """
    if not seconds >= 0 or not spin >= 0:
        raise ValueError(f"polite: the sleep between polls and the spin must be >= 0 seconds, got {seconds!r} "
                         f"and {spin!r}")
    previous = getattr(_local, "sleep", 0.0), getattr(_local, "urgent", None), getattr(_local, "spin", 0.0)
    _local.sleep, _local.urgent, _local.spin = float(seconds), urgent, float(spin)
    try:
        yield
    finally:
        _local.sleep, _local.urgent, _local.spin = previous


def sleep_between_polls() -> float:
    """This thread's sleep between polls; 0 when it waits inside MPI."""
    return getattr(_local, "sleep", 0.0)


_ABANDONED = []
"""Requests whose wait failed (under --elastic, a dead peer): kept for good. Garbage-collected, mpi4py would free
them while still active, and Open MPI aborts the whole job when a freed request then fails ("Send error after
request freed")."""


def abandon(requests) -> None:
    """Keep ``requests`` (None allowed) from ever being freed: call it when a wait on them raised."""
    _ABANDONED.extend(r for r in requests if r is not None)


def wait_all(requests) -> None:
    """Complete every request, spinning in MPI_Waitall or politely (see module docstring). Where it raises, the
    requests are abandoned (never freed)."""
    try:
        _wait_all(requests)
    except MPI.Exception:
        abandon(requests)
        raise


def _wait_all(requests) -> None:
    sleep = getattr(_local, "sleep", 0.0)
    if not sleep:
        MPI.Request.Waitall(requests)
        return
    urgent, spin = _local.urgent, getattr(_local, "spin", 0.0)
    spin_until = time.perf_counter() + spin if spin else 0.0
    while not MPI.Request.Testall(requests):
        if urgent is not None and urgent():
            MPI.Request.Waitall(requests)
            return
        if not spin_until or time.perf_counter() >= spin_until:
            time.sleep(sleep)


def allreduce(comm: MPI.Comm, sendbuf, recvbuf, op) -> None:
    """MPI_Allreduce, or MPI_Iallreduce completed politely."""
    counter = traffic.current()
    if counter is not None:
        n = comm.Get_size()
        counter[0] += 2 * (n - 1) * _nbytes(recvbuf) // n
    if getattr(_local, "sleep", 0.0):
        wait_all([comm.Iallreduce(sendbuf, recvbuf, op)])
    else:
        comm.Allreduce(sendbuf, recvbuf, op)


def allgather(comm: MPI.Comm, sendbuf, recvbuf) -> None:
    """MPI_Allgather(v) (``recvbuf`` a buffer spec with counts for v), or its nonblocking form completed politely."""
    vector = isinstance(recvbuf, (list, tuple))
    counter = traffic.current()
    if counter is not None:
        counter[0] += (comm.Get_size() - 1) * _nbytes(sendbuf)
    if getattr(_local, "sleep", 0.0):
        start = comm.Iallgatherv if vector else comm.Iallgather
        wait_all([start(sendbuf, recvbuf)])
    else:
        (comm.Allgatherv if vector else comm.Allgather)(sendbuf, recvbuf)


def send(comm: MPI.Comm, buf, dest: int, tag: int) -> None:
    traffic.sent(_nbytes(buf))
    if getattr(_local, "sleep", 0.0):
        wait_all([comm.Isend(buf, dest, tag)])
    else:
        comm.Send(buf, dest, tag)


def recv(comm: MPI.Comm, buf, source: int, tag: int) -> None:
    if getattr(_local, "sleep", 0.0):
        wait_all([comm.Irecv(buf, source, tag)])
    else:
        comm.Recv(buf, source, tag)


def _nbytes(buf) -> int:
    return 0 if buf is MPI.IN_PLACE else memoryview(buf).nbytes
