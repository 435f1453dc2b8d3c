"""PLACEHOLDER, synchronous, to be replaced by the real engine (a FIFO thread, a fixed-width signature check).

The contract every operation is written against:

    handle = submit(kind, name, describe, body, process_set=None)
    output = synchronize(handle)        # body's return value; raises the operation's error
    done = poll(handle)                 # True once synchronize would not block

``kind`` is the operation ("allreduce", "allgather", ...). ``name`` is the
user's name or None. ``describe`` is a dict of what must agree across ranks
(dtype, shape, op, root, ...): on a mismatch every rank raises
HorovodMismatchError naming the field and each rank's value. ``body(comm)``
runs the collective on the process set's engine communicator and returns the
output; it runs on the engine's thread, in submission order.
"""
import itertools

from mpi4py import MPI

from .basics import job


class HorovodMismatchError(RuntimeError):
    """The ranks called different operations: raised on every rank."""


_handles: dict[int, object] = {}
_counter = itertools.count()


def engine_comm(process_set=None) -> MPI.Comm:
    """The engine communicator of ``process_set`` (None: the whole job)."""
    if process_set is None:
        return job().engine
    return process_set._engine_comm()


def submit(kind: str, name: str | None, describe: dict, body, process_set=None) -> int:
    comm = engine_comm(process_set)
    mine = (kind, name, sorted(describe.items()))
    every = comm.allgather(mine)
    handle = next(_counter)
    if any(other != mine for other in every):
        _handles[handle] = HorovodMismatchError(f"ranks disagree on {kind} {name!r}: {every}")
    else:
        try:
            _handles[handle] = ("ok", body(comm))
        except Exception as e:  # noqa: BLE001  (handed to synchronize, as the real engine does)
            _handles[handle] = e
    return handle


def poll(handle: int) -> bool:
    if handle not in _handles:
        raise ValueError(f"hvd.poll: handle {handle!r} is not a pending operation's")
    return True


def synchronize(handle: int):
    if handle not in _handles:
        raise ValueError(f"hvd.synchronize: handle {handle!r} is not a pending operation's")
    result = _handles.pop(handle)
    if isinstance(result, Exception):
        raise result
    return result[1]


def _stop_engine() -> None:
    """Stop the engine's thread, if it runs."""
    _handles.clear()
