"""allgather and grouped_allgather: every rank's rows, concatenated along the first dimension in rank order.

The first dimension may differ across ranks; dtype and the other dimensions
must agree (they are the operation's description, so a mismatch raises on every
rank). One engine operation gathers a whole group: the ranks first exchange
their row counts, then each tensor's bytes move, through ringtrain's ring
allgather where every rank holds the same number of whole words, and MPI's
Allgatherv otherwise (uneven rows, odd byte counts).

Differentiable as in Horovod: the gradient of a rank's input is the incoming
gradient averaged over the process set, narrowed to that rank's rows.
"""
import numpy as np
import torch
from mpi4py import MPI

from .. import collectives
from . import engine, gradient_average, submission
from .tensor_views import byte_view, dense, displacements, row_bytes, tensor_problem, word_view


def allgather_async(tensor, name=None, process_set=None) -> int:
    """Start gathering ``tensor``'s rows from every rank; ``synchronize(handle)`` gives the concatenation.

    ``process_set`` (default: the whole job) limits the operation to its members.

    >>> h = hvd.allgather_async(torch.full((hvd.rank() + 1, 2), hvd.rank()))   # doctest: +SKIP
    >>> hvd.synchronize(h).shape                      # 2 ranks: 1 + 2 rows  # doctest: +SKIP
    torch.Size([3, 2])
    """
    return _submit("allgather", [tensor], name, process_set, single=True)


def allgather(tensor, name=None, process_set=None) -> torch.Tensor:
    """``tensor``'s rows from every rank, concatenated along dimension 0 in rank order; differentiable.

    >>> hvd.allgather(torch.tensor([hvd.rank()]))     # 3 ranks  # doctest: +SKIP
    tensor([0, 1, 2])
    """
    return _GatherRows.apply("allgather", name, process_set, tensor)[0]


def grouped_allgather_async(tensors, name=None, process_set=None) -> int:
    """Start allgathering each of ``tensors`` as one operation; ``synchronize`` gives the list of results."""
    return _submit("grouped_allgather", tensors, name, process_set)


def grouped_allgather(tensors, name=None, process_set=None) -> list[torch.Tensor]:
    """Each of ``tensors`` allgathered, as one operation; differentiable.

    >>> [t.shape for t in hvd.grouped_allgather([torch.zeros(2), torch.zeros(1, 3)])]   # 2 ranks # doctest: +SKIP
    [torch.Size([4]), torch.Size([2, 3])]
    """
    return list(_GatherRows.apply("grouped_allgather", name, process_set, *tensors))


class _GatherRows(torch.autograd.Function):
    """Allgather of a group of tensors, with Horovod's gradient (the set's average, narrowed to our rows)."""

    @staticmethod
    def forward(ctx, what, name, process_set, *tensors):
        handle = _submit(what, tensors, name, process_set, single=what == "allgather", keep_rows=True)
        outputs, rows = engine.synchronize(handle)
        ctx.process_set, ctx.rows = process_set, rows
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads):
        averaged = gradient_average.average(grads, ctx.process_set)
        me = engine.engine_comm(ctx.process_set).Get_rank()
        first = ctx.rows[:me].sum(axis=0)  # (tensors,): where our rows start in each gathered tensor
        return (None, None, None, *(g.narrow(0, int(first[i]), int(ctx.rows[me, i])) for i, g in enumerate(averaged)))


def _submit(what, tensors, name, process_set, single=False, keep_rows=False) -> int:
    """Hand the gather of ``tensors`` to the engine; its result is the gathered list (and the row counts)."""
    problem = None
    if isinstance(tensors, torch.Tensor) or not hasattr(tensors, "__iter__"):
        problem, tensors = f"{what}: tensors must be a list of tensors, got {type(tensors).__name__}", []
    tensors = list(tensors)
    entries = []
    for i, t in enumerate(tensors):
        wrong = tensor_problem(what, t, "tensor" if single else f"tensors[{i}]")
        if wrong is None and t.dim() == 0:
            wrong = (f"{what}: {'tensor' if single else f'tensors[{i}]'} is a scalar (0-d); rows are gathered "
                     "along the first dimension, so give it one (tensor.reshape(1))")
        problem = problem or wrong
        entries.append((str(t.dtype), tuple(t.shape[1:])) if wrong is None else ("?", ()))
    inputs = [] if problem else [dense(t) for t in tensors]

    def body(comm):
        rows = _row_counts(comm, inputs)
        outputs = [_gather(comm, t, rows[:, i]) for i, t in enumerate(inputs)]
        if keep_rows:
            return outputs, rows
        return outputs[0] if single else outputs

    return submission.submit("allgather", name, {"tensors": tuple(entries)}, body, process_set, problem)


def _row_counts(comm: MPI.Comm, tensors) -> np.ndarray:
    """(ranks, tensors): every rank's first dimension of each tensor, in one Allgather."""
    mine = np.array([t.shape[0] for t in tensors], dtype=np.int64)
    every = np.empty((comm.Get_size(), mine.size), dtype=np.int64)
    comm.Allgather(mine, every)
    return every


def _gather(comm: MPI.Comm, tensor: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """The concatenation of every rank's ``tensor`` (``rows[r]`` rows on rank r)."""
    out = tensor.new_empty((int(rows.sum()), *tensor.shape[1:]))
    if out.numel() == 0:
        return out
    if comm.Get_size() == 1:
        return out.copy_(tensor)
    counts = rows * row_bytes(tensor)
    words = word_view(tensor) if (counts == counts[0]).all() else None
    if words is not None:
        # Equal whole-word chunks: chunk r of ringtrain's layout is exactly rank r's rows.
        everything = byte_view(out).view(words.dtype)
        r = comm.Get_rank()
        everything[r * words.size:(r + 1) * words.size] = words
        collectives.allgather(everything, comm=comm, check=False)  # the engine has compared the layouts
    else:
        comm.Allgatherv([byte_view(tensor), MPI.BYTE],
                        [byte_view(out), counts.tolist(), displacements(counts).tolist(), MPI.BYTE])
    return out
