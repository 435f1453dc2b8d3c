"""alltoall: each rank sends consecutive blocks of its rows to the ranks in order, and receives theirs.

``splits[i]`` rows go to rank i of the process set (by default the rows split
evenly, which needs the first dimension to be a multiple of the set's size);
what a rank receives is the concatenation of the blocks sent to it, in rank
order. The ranks first exchange their splits (MPI_Alltoall of counts), then
the bytes (MPI_Alltoallv), so every dtype travels.

Returns as Horovod 0.28.1: ``alltoall`` gives the received tensor, plus the
received splits (an int32 tensor, or the dtype of a ``splits`` tensor) when
``splits`` was passed; ``synchronize`` of ``alltoall_async`` always gives the
pair. Differentiable: the gradient travels back by an alltoall with the
received splits (rows that were sent nowhere get a zero gradient).
"""
import numpy as np
import torch
from mpi4py import MPI

from . import engine, submission
from .tensor_views import byte_view, dense, displacements, row_bytes, tensor_problem


def alltoall_async(tensor, splits=None, name=None, process_set=None) -> int:
    """Start the exchange; ``synchronize(handle)`` gives ``(received, received_splits)``.

    >>> out, got = hvd.synchronize(hvd.alltoall_async(torch.arange(4), splits=[1, 3]))   # 2 ranks # doctest: +SKIP
    """
    return _submit(tensor, splits, name, process_set)


def alltoall(tensor, splits=None, name=None, process_set=None):
    """The rows the other ranks sent here, and their counts where ``splits`` was given; differentiable.

    >>> hvd.alltoall(torch.tensor([10 * hvd.rank(), 10 * hvd.rank() + 1]))   # 2 ranks, rank 1 # doctest: +SKIP
    tensor([ 1, 11])
    """
    received, received_splits = _ExchangeRows.apply(tensor, splits, name, process_set)
    return received if splits is None else (received, received_splits)


class _ExchangeRows(torch.autograd.Function):
    """alltoall with Horovod's gradient: the gradient's rows go back where they came from."""

    @staticmethod
    def forward(ctx, tensor, splits, name, process_set):
        received, received_splits = engine.synchronize(_submit(tensor, splits, name, process_set))
        ctx.process_set, ctx.received_splits, ctx.rows = process_set, received_splits, tensor.shape[0]
        ctx.mark_non_differentiable(received_splits)
        return received, received_splits

    @staticmethod
    def backward(ctx, grad, _splits_grad):
        returned, _ = engine.synchronize(_submit(grad, ctx.received_splits, None, ctx.process_set))
        unsent = ctx.rows - returned.shape[0]  # rows past sum(splits) went nowhere: their gradient is zero
        if unsent:
            returned = torch.cat([returned, returned.new_zeros((unsent, *returned.shape[1:]))])
        return returned, None, None, None


def _submit(tensor, splits, name, process_set) -> int:
    comm = engine.engine_comm(process_set)
    sends, problem = _send_counts(tensor, splits, comm.Get_size())
    if problem:
        return submission.submit("alltoall", name, {"dtype": "?", "rest": ()}, None, process_set, problem)
    data = dense(tensor)
    received_dtype = splits.dtype if isinstance(splits, torch.Tensor) else torch.int32

    def body(comm):
        n = comm.Get_size()
        receives = np.empty(n, dtype=np.int64)
        comm.Alltoall(sends, receives)
        out = data.new_empty((int(receives.sum()), *data.shape[1:]))
        row = row_bytes(data)
        send_bytes, receive_bytes = sends * row, receives * row
        comm.Alltoallv([byte_view(data), send_bytes.tolist(), displacements(send_bytes).tolist(), MPI.BYTE],
                       [byte_view(out), receive_bytes.tolist(), displacements(receive_bytes).tolist(), MPI.BYTE])
        return out, torch.from_numpy(receives).to(received_dtype)

    describe = {"dtype": str(tensor.dtype), "rest": tuple(tensor.shape[1:])}
    return submission.submit("alltoall", name, describe, body, process_set)


def _send_counts(tensor, splits, n: int) -> tuple[np.ndarray | None, str | None]:
    """The rows this rank sends to each rank, or why ``tensor`` and ``splits`` do not make them."""
    problem = tensor_problem("alltoall", tensor)
    if problem:
        return None, problem
    if tensor.dim() == 0:
        return None, "alltoall: tensor is a scalar (0-d); its rows are split along the first dimension"
    rows = tensor.shape[0]
    if splits is None:
        if rows % n:
            return None, (f"alltoall: tensor's first dimension ({rows}) is not a multiple of the number of "
                          f"processes ({n}); pass splits= to say how many rows go to each")
        return np.full(n, rows // n, dtype=np.int64), None
    if isinstance(splits, torch.Tensor):
        if splits.dtype.is_floating_point or splits.dtype.is_complex or splits.dtype == torch.bool:
            return None, f"alltoall: splits must hold integers (int32), got a {splits.dtype} tensor"
        splits = splits.detach().cpu().reshape(-1).tolist()
    try:
        counts = np.array([submission.as_rank(s) for s in splits], dtype=np.int64)
    except (TypeError, ValueError):
        return None, f"alltoall: splits={splits!r} must be a sequence of non-negative integers, one per process"
    if counts.shape != (n,) or (counts < 0).any():
        return None, f"alltoall: splits={splits!r} must hold {n} non-negative integers, one per process"
    if counts.sum() > rows:
        return None, (f"alltoall: splits={splits!r} send {int(counts.sum())} rows, more than the tensor's first "
                      f"dimension ({rows})")
    return counts, None
