"""broadcast_object and allgather_object: any picklable Python object, moved as bytes through the engine.

Objects are pickled with cloudpickle where it is installed (as Horovod does,
so lambdas and local classes travel) and with pickle otherwise, on the calling
thread, when the call is made. Each call is one engine operation, so it stays
in order with the asynchronous operations already submitted.

An object that will not pickle fails the operation on every rank of the
process set: the rank that could not pickle raises its own exception, the
others a RuntimeError naming that rank.
"""
import pickle

import numpy as np
from mpi4py import MPI

from . import engine, submission
from .basics import rank
from .tensor_views import displacements

try:
    import cloudpickle as _pickler
except ImportError:  # plain pickle: everything importable still travels
    _pickler = pickle


def broadcast_object(obj, root_rank=0, name=None, process_set=None):
    """The root's ``obj`` on every rank of the process set (the root gets ``obj`` itself back).

    ``root_rank`` is a job rank, as in Horovod. ``name`` names the operation;
    where it is None the engine numbers it (Horovod defaults it to the
    object's type name, which need not agree across ranks).

    >>> hvd.broadcast_object({"epoch": 3} if hvd.rank() == 0 else None)   # doctest: +SKIP
    {'epoch': 3}
    """
    problem = submission.root_problem("broadcast_object", root_rank, engine.engine_comm(process_set))
    if problem:
        return submission.submit("broadcast_object", name, {"root": repr(root_rank)}, None, process_set, problem)
    root = int(root_rank)
    payload, failure = (_pickled(obj) if rank() == root else (None, None))

    def body(comm):
        at = submission.set_rank(comm, root)
        length = np.array([-1 if failure else 0 if payload is None else payload.size], dtype=np.int64)
        comm.Bcast(length, at)
        if failure is not None:
            raise failure
        if length[0] < 0:
            raise RuntimeError(f"broadcast_object: the root, rank {root}, could not pickle its object")
        data = payload if payload is not None else np.empty(int(length[0]), dtype=np.uint8)
        comm.Bcast([data, MPI.BYTE], at)
        return data

    data = engine.synchronize(submission.submit("broadcast_object", name, {"root": root}, body, process_set))
    return obj if rank() == root else pickle.loads(data.tobytes())


def allgather_object(obj, name=None, process_set=None) -> list:
    """Every rank's ``obj``, as a list in process-set rank order.

    >>> hvd.allgather_object(hvd.rank())   # 3 ranks  # doctest: +SKIP
    [0, 1, 2]
    """
    payload, failure = _pickled(obj)

    def body(comm):
        lengths = np.empty(comm.Get_size(), dtype=np.int64)
        comm.Allgather(np.array([-1 if failure else payload.size], dtype=np.int64), lengths)
        if failure is not None:
            raise failure
        if (lengths < 0).any():
            raise RuntimeError(f"allgather_object: the process set's ranks {np.flatnonzero(lengths < 0).tolist()} "
                               "could not pickle their objects")
        data = np.empty(int(lengths.sum()), dtype=np.uint8)
        comm.Allgatherv([payload, MPI.BYTE], [data, lengths.tolist(), displacements(lengths).tolist(), MPI.BYTE])
        return data, lengths

    data, lengths = engine.synchronize(submission.submit("allgather_object", name, {}, body, process_set))
    starts = displacements(lengths)
    return [pickle.loads(data[s:s + n].tobytes()) for s, n in zip(starts, lengths)]


def _pickled(obj) -> tuple[np.ndarray | None, Exception | None]:
    """``obj``'s pickle as bytes, or the exception pickling raised."""
    try:
        return np.frombuffer(bytearray(_pickler.dumps(obj)), dtype=np.uint8), None  # writable, as Bcast wants
    except Exception as e:  # noqa: BLE001  (raised in the operation, after the peers have heard of it)
        return None, e
