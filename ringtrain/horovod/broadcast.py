"""broadcast and broadcast_: the root's tensor on every rank of the process set.

``root_rank`` is a rank of the job, as in Horovod, also for a process set
(which must contain it); dtype, shape and root must agree across the set.
The bytes move by ringtrain's broadcast (native MPI_Bcast for small tensors, a
pipelined chain for large ones) as whole words, or by MPI_Bcast of bytes where
the size is not a multiple of 4 bytes.

``broadcast`` leaves its input alone and is differentiable as in Horovod: the
gradient is the incoming gradient averaged over the set on the root, and zero
elsewhere. ``broadcast_`` overwrites its input.
"""
import torch
from mpi4py import MPI

from .. import collectives
from . import engine, gradient_average, submission
from .basics import rank
from .tensor_views import byte_view, dense, tensor_problem, word_view


def broadcast_async(tensor, root_rank, name=None, process_set=None) -> int:
    """Start broadcasting ``tensor`` from ``root_rank``; ``synchronize(handle)`` gives a new tensor.

    >>> hvd.synchronize(hvd.broadcast_async(torch.tensor([hvd.rank()]), root_rank=1))   # doctest: +SKIP
    tensor([1])
    """
    return _submit(tensor, root_rank, name, process_set, in_place=False)


def broadcast(tensor, root_rank, name=None, process_set=None) -> torch.Tensor:
    """The root's ``tensor``, as a new tensor on every rank; differentiable.

    >>> hvd.broadcast(torch.tensor([hvd.rank()]), root_rank=0)   # doctest: +SKIP
    tensor([0])
    """
    return _BroadcastFrom.apply(tensor, root_rank, name, process_set)


def broadcast_async_(tensor, root_rank, name=None, process_set=None) -> int:
    """Start overwriting ``tensor`` with the root's; ``synchronize(handle)`` gives ``tensor`` itself."""
    return _submit(tensor, root_rank, name, process_set, in_place=True)


def broadcast_(tensor, root_rank, name=None, process_set=None) -> torch.Tensor:
    """Overwrite ``tensor`` with the root's and return it.

    >>> t = torch.tensor([hvd.rank()]); hvd.broadcast_(t, root_rank=0); t   # doctest: +SKIP
    tensor([0])
    """
    return engine.synchronize(broadcast_async_(tensor, root_rank, name, process_set))


class _BroadcastFrom(torch.autograd.Function):
    """Out-of-place broadcast, with Horovod's gradient (the set's average on the root, zero elsewhere)."""

    @staticmethod
    def forward(ctx, tensor, root_rank, name, process_set):
        ctx.root_rank, ctx.process_set = root_rank, process_set
        return engine.synchronize(_submit(tensor, root_rank, name, process_set, in_place=False))

    @staticmethod
    def backward(ctx, grad):
        (averaged,) = gradient_average.average([grad], ctx.process_set)
        if rank() != ctx.root_rank:
            averaged.zero_()
        return averaged, None, None, None


def _submit(tensor, root_rank, name, process_set, in_place: bool) -> int:
    what = "broadcast_" if in_place else "broadcast"
    problem = tensor_problem(what, tensor) or submission.root_problem(what, root_rank,
                                                                       engine.engine_comm(process_set))
    if problem:
        describe = {"dtype": "?", "shape": (), "root": repr(root_rank)}
        return submission.submit("broadcast", name, describe, None, process_set, problem)
    root = int(root_rank)

    def body(comm):
        # The root is translated to the set's communicator when the operation runs, on the engine's thread.
        at = submission.set_rank(comm, root)
        if in_place:
            data = tensor.detach()  # written under autograd's feet, as Horovod's in-place broadcast does
            buffer = data if data.is_contiguous() else data.contiguous()
        else:
            buffer = dense(tensor).clone()  # a new tensor; the root's already holds the answer
        _broadcast_bytes(comm, buffer, at)
        if in_place:
            if buffer is not data:
                data.copy_(buffer)
            return tensor
        return buffer

    describe = {"dtype": str(tensor.dtype), "shape": tuple(tensor.shape), "root": root}
    return submission.submit("broadcast", name, describe, body, process_set)


def _broadcast_bytes(comm: MPI.Comm, buffer: torch.Tensor, root: int) -> None:
    if comm.Get_size() == 1 or buffer.numel() == 0:
        return
    words = word_view(buffer)
    if words is not None:
        collectives.broadcast(words, root, comm=comm, check=False)  # the engine has compared the layouts
    else:
        comm.Bcast([byte_view(buffer), MPI.BYTE], root)
