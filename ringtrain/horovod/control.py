"""Operations that carry no tensor: barrier and join.

Both are engine operations, queued behind what the caller submitted before.
``barrier`` returns once every rank of the set has reached it: its agreement
round is itself the rendezvous. ``join`` says that this rank has no more data:
until every rank has joined, it takes part in the others' allreduces with a
neutral contribution (zeros for Sum and Average, whose divisor stays the
set's full size), and each ``join`` returns the last rank to join (lane.py).
"""
from .engine import register_joined_body, submit, synchronize
from .process_sets import global_process_set

register_joined_body("barrier", lambda describe: (lambda comm: None))


def barrier(process_set=global_process_set) -> None:
    """Wait until every rank of ``process_set`` has called barrier (after its earlier operations ran).

    >>> import ringtrain.horovod as hvd; from mpi4py import MPI
    >>> hvd.init(MPI.COMM_SELF); hvd.barrier()
    >>> hvd.shutdown()
    """
    synchronize(submit("barrier", None, {}, lambda comm: None, process_set))


def join(device: int = -1) -> int:
    """This rank has no more data: serve the others' allreduces with zeros until all have joined.

    Returns the rank that joined last, the same on every rank. ``device`` is
    Horovod's GPU index and is ignored (ringtrain.horovod works on CPU tensors).

    >>> import ringtrain.horovod as hvd; from mpi4py import MPI
    >>> hvd.init(MPI.COMM_SELF); hvd.join()
    0
    >>> hvd.shutdown()
    """
    if isinstance(device, bool) or not isinstance(device, int):
        raise ValueError(f"hvd.join: device={device!r} must be an int (a GPU index, or -1)")
    return synchronize(submit("join", None, {}, None, None))
