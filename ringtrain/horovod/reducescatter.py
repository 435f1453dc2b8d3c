"""reducescatter and grouped_reducescatter: the sum (or average) over ranks, each rank keeping a block of rows.

With ``N`` rows on ``n`` ranks, rank ``r`` keeps ``N // n`` rows, one more for
the first ``N % n`` ranks, as Horovod splits them (ringtrain's balanced layout,
counted in rows). Shape, dtype and op must agree across the process set.

The sum is ringtrain's ring reduce-scatter (16-bit floats accumulate in
float32; Average divides before the rounding). It cuts a flat buffer into
``n`` equal chunks, so where ``N`` is not a multiple of ``n`` the rows are laid
out in ``n`` slots of ``ceil(N / n)`` rows, the short blocks padded with zeros.
int8, uint8, int16 and complex tensors are summed by MPI_Reduce_scatter_block
on the same layout.

Scaling follows Horovod: ``prescale_factor`` multiplies each input before the
sum, ``postscale_factor`` the result (integers scaled in float64 and truncated,
16-bit floats in float32). Differentiable as in Horovod: the gradient is the
allgather of the incoming gradient, times the set's size for Sum.
"""
import numbers

import numpy as np
import torch
from mpi4py import MPI

from .. import collectives
from . import engine, submission
from .basics import Adasum, Average, Max, Min, Product, Sum
from .allgather import grouped_allgather as _grouped_allgather
from .tensor_views import MPI_SUMS, RINGTRAIN_SUMS, SUMMABLE, byte_view, dense, tensor_problem

_OP_NAMES = {Average: "Average", Sum: "Sum", Adasum: "Adasum", Min: "Min", Max: "Max", Product: "Product"}


def reducescatter_async(tensor, name=None, op=Average, process_set=None, prescale_factor=1.0,
                        postscale_factor=1.0) -> int:
    """Start the reduce-scatter of ``tensor``; ``synchronize(handle)`` gives this rank's block.

    >>> hvd.synchronize(hvd.reducescatter_async(torch.ones(4, 2), op=hvd.Sum))   # 2 ranks # doctest: +SKIP
    tensor([[2., 2.],
            [2., 2.]])
    """
    return _submit("reducescatter", [tensor], name, op, process_set, prescale_factor, postscale_factor, single=True)


def reducescatter(tensor, name=None, compression=None, op=Average, process_set=None, prescale_factor=1.0,
                  postscale_factor=1.0) -> torch.Tensor:
    """This rank's block of rows of the sum (op=Sum) or average (op=Average) of ``tensor`` over the set.

    ``compression`` is a Horovod compressor (``compress``/``decompress``);
    None, the default, is Horovod's Compression.none. Differentiable.

    >>> hvd.reducescatter(torch.ones(3), op=hvd.Sum)   # 2 ranks: rank 0 keeps 2 rows, rank 1 one # doctest: +SKIP
    tensor([2., 2.])
    """
    (out,) = _compressed(compression, [tensor], lambda squeezed: _ScatterSum.apply(
        "reducescatter", name, op, process_set, prescale_factor, postscale_factor, *squeezed))
    return out


def grouped_reducescatter_async(tensors, name=None, op=Average, process_set=None, prescale_factor=1.0,
                                postscale_factor=1.0) -> int:
    """Start reduce-scattering each of ``tensors`` as one operation; ``synchronize`` gives the list."""
    return _submit("grouped_reducescatter", tensors, name, op, process_set, prescale_factor, postscale_factor)


def grouped_reducescatter(tensors, name=None, compression=None, op=Average, process_set=None,
                          prescale_factor=1.0, postscale_factor=1.0) -> list[torch.Tensor]:
    """Each of ``tensors`` reduce-scattered, as one operation; differentiable."""
    return _compressed(compression, list(tensors), lambda squeezed: list(_ScatterSum.apply(
        "grouped_reducescatter", name, op, process_set, prescale_factor, postscale_factor, *squeezed)))


def _compressed(compression, tensors, reduce_scatter):
    if compression is None:
        return reduce_scatter(tensors)
    squeezed, contexts = zip(*(compression.compress(t) for t in tensors)) if tensors else ((), ())
    return [compression.decompress(t, c) for t, c in zip(reduce_scatter(list(squeezed)), contexts)]


class _ScatterSum(torch.autograd.Function):
    """Reduce-scatter of a group, with Horovod's gradient: allgather of the gradient (times n for Sum)."""

    @staticmethod
    def forward(ctx, what, name, op, process_set, prescale_factor, postscale_factor, *tensors):
        ctx.op, ctx.process_set = op, process_set
        single = what == "reducescatter"
        result = engine.synchronize(_submit(what, tensors, name, op, process_set, prescale_factor,
                                            postscale_factor, single))
        return (result,) if single else tuple(result)

    @staticmethod
    def backward(ctx, *grads):
        if ctx.op == Sum:
            n = engine.engine_comm(ctx.process_set).Get_size()
            grads = [g * n for g in grads]
        gathered = _grouped_allgather(list(grads), process_set=ctx.process_set)
        return (None,) * 6 + tuple(gathered)


def _submit(what, tensors, name, op, process_set, prescale_factor, postscale_factor, single=False) -> int:
    problem, error = None, ValueError
    if isinstance(tensors, torch.Tensor) or not hasattr(tensors, "__iter__"):
        problem, tensors = f"{what}: tensors must be a list of tensors, got {type(tensors).__name__}", []
    tensors = list(tensors)
    op_name = _OP_NAMES.get(op) if isinstance(op, int) and not isinstance(op, bool) else None
    if op_name is None:
        problem = f"{what}: op={op!r} is not a reduction op; use hvd.Average or hvd.Sum"
    elif op not in (Average, Sum):  # a Horovod op that reducescatter does not do: Horovod raises a RuntimeError
        problem, error = f"{what}: op={op_name} is not supported; use hvd.Average or hvd.Sum", NotImplementedError
    entries = []
    for i, t in enumerate(tensors):
        label = "tensor" if single else f"tensors[{i}]"
        wrong = tensor_problem(what, t, label)
        if wrong is None and t.dim() == 0:
            wrong = f"{what}: {label} is a scalar (0-d); its rows are scattered, so give it a first dimension"
        if wrong is None and t.dtype not in SUMMABLE:
            wrong = f"{what}: {label} has dtype {t.dtype}, which cannot be summed; use one of {list(SUMMABLE)}"
        problem = problem or wrong
        entries.append((str(t.dtype), tuple(t.shape)) if wrong is None else ("?", ()))
    for label, factor in (("prescale_factor", prescale_factor), ("postscale_factor", postscale_factor)):
        if not isinstance(factor, numbers.Real) or isinstance(factor, bool):
            problem = problem or f"{what}: {label}={factor!r} must be a number"
    describe = {"tensors": tuple(entries), "op": op_name or repr(op)}
    if problem:
        return submission.submit("reducescatter", name, describe, None, process_set, problem, error)
    # Prescaled copies, made now: the sum happens in them, and the caller's tensors are left as they were.
    inputs = [_scaled(dense(t).clone(), prescale_factor) for t in tensors]

    def body(comm):
        outputs = [_reduce_scatter_rows(comm, t, op == Average, postscale_factor) for t in inputs]
        return outputs[0] if single else outputs

    return submission.submit("reducescatter", name, describe, body, process_set)


def _reduce_scatter_rows(comm: MPI.Comm, tensor: torch.Tensor, average: bool, postscale: float) -> torch.Tensor:
    n, me = comm.Get_size(), comm.Get_rank()
    rows, rest = tensor.shape[0], tensor.shape[1:]
    lo, hi = collectives.chunk_bounds(rows, n, me)  # Horovod's blocks: the first N % n ranks get one row more
    if tensor.numel() == 0:
        return tensor.new_empty((hi - lo, *rest))
    row = tensor[0].numel()
    slot = -(-rows // n)  # rows per slot: ceil(N / n)
    if slot * n == rows:
        slots = tensor.reshape(n, slot * row)  # the blocks are the slots already
    else:
        slots = tensor.new_zeros((n, slot, *rest))
        for r in range(n):
            a, b = collectives.chunk_bounds(rows, n, r)
            slots[r, :b - a] = tensor[a:b]
        slots = slots.reshape(n, slot * row)
    floating = tensor.is_floating_point()
    if n == 1:
        mine = slots[0]
    elif tensor.dtype in RINGTRAIN_SUMS:
        # check=False: the engine has already compared dtype, shape and op across the set.
        mine = collectives.reduce_scatter(slots.reshape(-1), op="mean" if average and floating else "sum",
                                          comm=comm, check=False)
    else:
        mine = slots.new_empty(slot * row)
        numpy_dtype = np.dtype(str(tensor.dtype).removeprefix("torch."))
        comm.Reduce_scatter_block(byte_view(slots).view(numpy_dtype), byte_view(mine).view(numpy_dtype), MPI.SUM)
    out = mine[:(hi - lo) * row].reshape(hi - lo, *rest).clone()
    if average and not floating:  # integers and complex: divided after the sum (integers in float64, truncated)
        out = out.div_(n) if out.is_complex() else out.copy_((out.double() / n).to(out.dtype))
    return _scaled(out, postscale)


def _scaled(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    """``tensor`` times ``factor``, in place, in Horovod's arithmetic for its dtype."""
    if factor == 1:
        return tensor
    if tensor.is_floating_point() and tensor.element_size() == 2:
        return tensor.copy_(tensor.float() * factor)  # 16-bit floats: scaled in float32, rounded once
    if tensor.is_floating_point() or tensor.is_complex():
        return tensor.mul_(factor)
    return tensor.copy_((tensor.double() * factor).to(tensor.dtype))  # integers: float64, truncated
