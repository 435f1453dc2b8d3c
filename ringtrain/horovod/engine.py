"""The engine: operations return a handle at once and run in submission order on an engine thread.

The contract every operation is written against:

    handle = submit(kind, name, describe, body, process_set=None)
    output = synchronize(handle)        # body's return value; raises the operation's error
    done = poll(handle)                 # True once synchronize would not block

``kind`` is the operation ("allreduce", "allgather", ...). ``name`` is the
user's name or None. ``describe`` is a dict of what must agree across ranks
(dtype, shape, op, root, ...): on a mismatch every rank raises
HorovodMismatchError naming the field and each rank's value. ``body(comm)``
runs the collective on the process set's engine communicator and returns the
output; it runs on the engine's thread, in submission order. A body should
refuse bad input before its first collective, or on every rank alike: a rank
whose body fails makes every rank raise, but only once the others have left
their collectives.

Beside it: ``refuse(kind, name, error, process_set)`` raises a refused
argument after telling the other ranks (so that none waits for this rank's
operation); ``register_joined_body(kind, make)`` lets ranks inside ``join``
serve operations of that kind (allreduce and barrier do; others raise while a
rank has joined, as Horovod's allgather and broadcast do); ``submit(...,
fusion=Fusion(...))`` lets like operations queued back to back run as one
(fusion.py).

Each process set has its own lane (lane.py): its queue and its thread, so
that operations on different sets never wait for each other, as Horovod's
process sets run concurrently. A set's lane opens when the set is
registered (the job's at ``hvd.init``), collectively over its members.

>>> import ringtrain.horovod as hvd
>>> hvd.init(MPI.COMM_SELF)
>>> synchronize(submit("example", None, {}, lambda comm: comm.Get_size()))
1
>>> hvd.shutdown()
"""
import itertools
import sys
import threading

from mpi4py import MPI

from .agreement import signature
from .basics import job
from .fusion import Fusion
from .lane import JOINED_BODIES, HorovodInternalError, HorovodMismatchError, Lane, Operation

__all__ = ["Fusion", "HorovodInternalError", "HorovodMismatchError", "engine_comm", "submit", "poll", "synchronize", "refuse",
           "register_joined_body"]

_lock = threading.Lock()  # guards the tables below; never held across MPI or a wait
_lanes: dict[int, Lane] = {}  # process set id (0: the job) -> its lane
_ops: dict[int, Operation] = {}  # handle -> operation, until synchronized
_counter = itertools.count()


def engine_comm(process_set=None) -> MPI.Comm:
    """The engine communicator of ``process_set`` (None: the whole job).

    ValueError if this rank is not in the set.
    """
    if process_set is None:
        return job().engine
    return process_set._engine_comm()


def register_joined_body(kind: str, make) -> None:
    """Let ranks inside ``join`` take part in operations of ``kind``: ``make(describe)`` returns their body.

    Without one, an operation of that kind while some rank has joined raises on every active rank.
    """
    JOINED_BODIES[kind] = make


def _set_id(process_set) -> int:
    return 0 if process_set is None else process_set.process_set_id


def submit(kind: str, name: str | None, describe: dict, body, process_set=None, *, fusion: Fusion | None = None) -> int:
    """Queue an operation on ``process_set``'s lane; returns its handle at once.

    ValueError if ``name`` is that of an operation on the set not yet synchronized (on every rank: see ``refuse``).
    ``fusion``: how the operation may run fused with the like ones queued behind it (fusion.py); then ``body``
    is not called.

    >>> import ringtrain.horovod as hvd
    >>> hvd.init(MPI.COMM_SELF)
    >>> h = submit("noop", "a", {"n": 1}, lambda comm: "done"); synchronize(h)
    'done'
    >>> hvd.shutdown()
    """
    engine_comm(process_set)  # refuses a rank that is not in the set
    key = _set_id(process_set)
    sig = signature(kind, name, describe)
    with _lock:
        lane = _lanes.get(key)
        if lane is None:
            raise ValueError(f"{kind}: process set {key} has no engine lane (not registered, or removed)")
        # A name is taken per kind, as Horovod prefixes each name with its operation's: a pending allgather
        # 'x' does not refuse an allreduce 'x'.
        duplicate = name is not None and (kind, name) in lane.names
        if not duplicate:
            if name is not None:
                lane.names.add((kind, name))
            handle = next(_counter)
            op = _ops[handle] = Operation(handle, kind, name, describe, body, sig, lane, fusion)
    if duplicate:
        refuse(kind, None, ValueError(f"{kind}: name={name!r} is the name of another operation in progress "
                                      "(submitted and not yet synchronized); pending names must be unique"),
               process_set)
    lane.put(op)
    return handle


def refuse(kind: str, name: str | None, error: Exception, process_set=None):
    """Raise ``error``, a refused argument, after making the other ranks of ``process_set`` raise too.

    A rank that refuses its call alone would leave the others waiting in the
    agreement for an operation that never comes. It queues a refusal in its
    place instead: where every rank refused alike they agree and all raise;
    elsewhere the others get HorovodMismatchError naming this rank's refusal.
    Never returns.
    """
    try:
        handle = submit(kind, name, {"refused": f"{type(error).__name__}: {error}"}, _raiser(error), process_set)
        synchronize(handle)
    except Exception:  # noqa: BLE001, S110  (this rank raises its own error, whatever the others did)
        pass
    raise error


def _raiser(error: Exception):
    def body(comm):
        raise error
    return body


def _lookup(handle, what: str) -> Operation:
    op = _ops.get(handle) if isinstance(handle, int) else None
    if op is None:
        raise ValueError(f"hvd.{what}: handle {handle!r} is not a pending operation's (already synchronized, "
                         "or never returned by an _async call)")
    return op


def poll(handle: int) -> bool:
    """Whether the operation of ``handle`` has finished, so that ``synchronize`` will not block. Never blocks.

    >>> import ringtrain.horovod as hvd
    >>> hvd.init(MPI.COMM_SELF)
    >>> h = submit("noop", None, {}, lambda comm: None); synchronize(h) is None
    True
    >>> hvd.shutdown()
    """
    return _lookup(handle, "poll").done.is_set()


def synchronize(handle: int):
    """Wait for the operation of ``handle`` and return its output; raises the operation's error.

    The wait blocks on an event, leaving the core to other threads.
    """
    op = _lookup(handle, "synchronize")
    if not op.done.is_set():
        if threading.current_thread() is op.lane.thread:
            raise RuntimeError(f"hvd.synchronize: called from the engine's own thread on {op.what()}, which runs "
                               "after the current operation; it would wait forever")
        with _lock:
            op.lane.waiters += 1
        try:
            op.done.wait()
        finally:
            with _lock:
                op.lane.waiters -= 1
    with _lock:
        _ops.pop(handle, None)
        op.lane.names.discard((op.kind, op.name))
    if op.error is not None:
        raise op.error
    return op.result


def _open_lane(process_set_id: int, comm: MPI.Comm) -> None:
    """Start the lane of a set being registered (the job's at init). Collective over ``comm``."""
    thread = "ringtrain.horovod engine" + (f" (process set {process_set_id})" if process_set_id else "")
    lane = Lane(comm, thread)
    with _lock:
        _lanes[process_set_id] = lane


def _stop_lane(process_set_id: int) -> None:
    """Drain and end one process set's lane (remove_process_set)."""
    with _lock:
        lane = _lanes.pop(process_set_id, None)
    if lane is not None:
        _stop(lane)


def _stop(lane: Lane) -> None:
    if not lane.stop():
        sys.stderr.write(f"ringtrain.horovod: {lane.thread.name} did not stop within 30 s (an operation that "
                         "another rank never submitted?); leaving it behind\n")


def _stop_engine() -> None:
    """Run what every lane has queued, then end the lanes' threads (hvd.shutdown)."""
    with _lock:
        lanes = list(_lanes.values())
        _lanes.clear()
    for lane in lanes:
        _stop(lane)
    with _lock:
        _ops.clear()
