"""Horovod's allreduce family: allreduce, allreduce_, grouped_allreduce, grouped_allreduce_, and their _async forms.

    summed = hvd.allreduce(t, op=hvd.Sum, name="loss")     # a new tensor; t is unchanged
    hvd.allreduce_(t)                                       # in place; op defaults to Average
    h = hvd.grouped_allreduce_async([a, b]); a2, b2 = hvd.synchronize(h)

Each call queues one operation on the engine (engine.py); its description
(dtypes, shapes, op, scale factors) is what the ranks must agree on. The
body reduces CPU tensors with ringtrain's collectives (reduction.py). The
out-of-place forms copy their input at the call, so the caller may change it
while the operation is queued, and are differentiable as Horovod's: the
gradient of an allreduce is the same allreduce of the gradient.

Differences from Horovod: Adasum is refused (NotImplementedError); tensors
must be on the CPU; integer Average rounds down (floor), as torch's
``floor_divide``, where Horovod's C++ truncated toward zero.
"""
import contextlib
import functools
import warnings

import torch

from .basics import Adasum, Average, Max, Min, Product, Sum
from .engine import Fusion, refuse, register_joined_body, submit, synchronize
from .process_sets import global_process_set
from .reduction import check_dtype, neutral, numpy_dtype_name, reduce_

try:  # Compression comes from its own module; until it exists, None means no compression.
    from .compression import Compression as _Compression
    _NO_COMPRESSION = _Compression.none
except ImportError:
    _NO_COMPRESSION = None

_OPS = {Average: "Average", Sum: "Sum", Min: "Min", Max: "Max", Product: "Product"}


def _op(op, average, what: str) -> int:
    """Horovod's op from ``op`` and the deprecated ``average`` (op default: Average)."""
    if op is not None:
        if average is not None:
            raise ValueError(f"{what}: the op parameter supersedes average; pass only one of them "
                             f"(got op={op!r}, average={average!r})")
    elif average is not None:
        warnings.warn("Parameter `average` has been replaced with `op` and will be removed", DeprecationWarning,
                      stacklevel=3)
        op = Average if average else Sum
    else:
        op = Average
    if op == Adasum:
        raise NotImplementedError(f"{what}: op=Adasum is not supported by ringtrain.horovod; use Average or Sum")
    if isinstance(op, bool) or op not in _OPS:
        raise ValueError(f"{what}: op={op!r} is not a reduce op; use hvd.Average, hvd.Sum, hvd.Min, hvd.Max or "
                         "hvd.Product")
    return int(op)


@contextlib.contextmanager
def _refusals(name, process_set):
    """A bad argument raises here after every rank of the set has been told (engine.refuse), not on this rank alone."""
    try:
        yield
    except (TypeError, ValueError, NotImplementedError) as e:
        refuse("allreduce", name, e, process_set)


def _submit(tensors: list, outputs: list, name, op: int, prescale, postscale, process_set, single: bool) -> int:
    """Queue the reduction of ``outputs`` (the inputs themselves, or their copies) in place."""
    describe = {"dtypes": [numpy_dtype_name(t.dtype) for t in tensors], "shapes": [tuple(t.shape) for t in tensors],
                "op": _OPS[op], "prescale_factor": float(prescale), "postscale_factor": float(postscale)}
    buffers = [t.detach() for t in outputs]  # the same memory, outside autograd's view
    fusion = _fusion(op, float(prescale), float(postscale), buffers, outputs[0] if single else outputs)

    def body(comm):
        fusion.reduce(comm, buffers)
        return fusion.result

    return submit("allreduce", name, describe, body, process_set, fusion=fusion)


def _fusion(op: int, prescale: float, postscale: float, buffers: list, result) -> Fusion:
    reduce = functools.partial(_reduce_groups, op=op, prescale=prescale, postscale=postscale)
    return Fusion(key=("allreduce", op, prescale, postscale), buffers=buffers, reduce=reduce, result=result)


def _reduce_groups(comm, tensors: list, op: int, prescale: float, postscale: float) -> None:
    # One reduction per dtype (in order of first appearance), each over the dtype's tensors laid end to end.
    by_dtype: dict = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        reduce_(comm, group, op, prescale, postscale)


def _joined_allreduce(describe: dict) -> Fusion:
    """What a rank inside join adds when the others allreduce: neutral values, fused as the others fuse."""
    op = next(k for k, v in _OPS.items() if v == describe["op"])
    tensors = [neutral(shape, getattr(torch, dtype), op) for dtype, shape in zip(describe["dtypes"],
                                                                                 describe["shapes"])]
    return _fusion(op, describe["prescale_factor"], describe["postscale_factor"], tensors, None)


register_joined_body("allreduce", _joined_allreduce)


def _checked(tensors, what: str, inplace: bool, prescale_factor, postscale_factor) -> list:
    """``tensors``, once each is one Horovod reduces (and the factors are numbers); TypeError or ValueError."""
    for label, factor in (("prescale_factor", prescale_factor), ("postscale_factor", postscale_factor)):
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not float(factor) == float(factor):
            raise TypeError(f"{what}: {label}={factor!r} must be a real number")
    for t in tensors:
        check_dtype(what, t)
        if inplace and not t.is_contiguous():
            raise ValueError(f"{what}: the tensor must be contiguous for an in-place allreduce")
    return tensors


def _copies(tensors) -> list:
    return [t.detach().clone(memory_format=torch.contiguous_format) for t in tensors]


def allreduce_async(tensor, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0,
                    process_set=global_process_set) -> int:
    """Start reducing ``tensor`` across the ranks of ``process_set``; returns a handle. ``tensor`` is not changed.

    ``synchronize(handle)`` returns a new tensor of ``tensor``'s shape and dtype.

    >>> import ringtrain.horovod as hvd; from mpi4py import MPI
    >>> hvd.init(MPI.COMM_SELF); hvd.synchronize(hvd.allreduce_async(torch.ones(2), op=hvd.Sum))
    tensor([1., 1.])
    >>> hvd.shutdown()
    """
    with _refusals(name, process_set):
        op = _op(op, average, "allreduce_async")
        _checked([tensor], "allreduce_async", False, prescale_factor, postscale_factor)
    return _submit([tensor], _copies([tensor]), name, op, prescale_factor, postscale_factor, process_set,
                   single=True)


def allreduce_async_(tensor, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0,
                     process_set=global_process_set) -> int:
    """Start reducing ``tensor`` in place; returns a handle, whose ``synchronize`` returns ``tensor``."""
    with _refusals(name, process_set):
        op = _op(op, average, "allreduce_async_")
        _checked([tensor], "allreduce_async_", True, prescale_factor, postscale_factor)
    return _submit([tensor], [tensor], name, op, prescale_factor, postscale_factor, process_set, single=True)


def allreduce_(tensor, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0,
               process_set=global_process_set):
    """Reduce ``tensor`` in place across the ranks of ``process_set`` and return it (op default: Average).

    >>> import ringtrain.horovod as hvd; from mpi4py import MPI
    >>> hvd.init(MPI.COMM_SELF); hvd.allreduce_(torch.ones(2), op=hvd.Sum, postscale_factor=3.0)
    tensor([3., 3.])
    >>> hvd.shutdown()
    """
    synchronize(allreduce_async_(tensor, average, name, op, prescale_factor, postscale_factor, process_set))
    return tensor


class _Allreduce(torch.autograd.Function):
    """allreduce as an autograd function: backward allreduces the gradient with the same op and factors."""

    @staticmethod
    def forward(ctx, tensor, name, op, prescale, postscale, process_set):
        ctx.options = (op, prescale, postscale, process_set)
        return synchronize(allreduce_async(tensor, None, name, op, prescale, postscale, process_set))

    @staticmethod
    def backward(ctx, grad):
        op, prescale, postscale, process_set = ctx.options
        return allreduce(grad, op=op, prescale_factor=prescale, postscale_factor=postscale,
                         process_set=process_set), None, None, None, None, None


def allreduce(tensor, average=None, name=None, compression=_NO_COMPRESSION, op=None, prescale_factor=1.0,
              postscale_factor=1.0, process_set=global_process_set):
    """Reduce ``tensor`` across the ranks of ``process_set``; returns a new tensor, ``tensor`` is unchanged.

    ``op``: hvd.Average (default), Sum, Min, Max or Product; Average divides by the set's size.
    ``compression``: an object with ``compress(t) -> (t, ctx)`` and ``decompress(t, ctx)``, such as
    ``hvd.Compression.fp16``. Differentiable.

    >>> import ringtrain.horovod as hvd; from mpi4py import MPI
    >>> hvd.init(MPI.COMM_SELF); hvd.allreduce(torch.tensor([1, 2]), op=hvd.Max)
    tensor([1, 2])
    >>> hvd.shutdown()
    """
    with _refusals(name, process_set):
        op = _op(op, average, "allreduce")
    if compression is not None:
        tensor, context = compression.compress(tensor)
    reduced = _Allreduce.apply(tensor, name, op, prescale_factor, postscale_factor, process_set)
    return compression.decompress(reduced, context) if compression is not None else reduced


def grouped_allreduce_async(tensors, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0,
                            process_set=global_process_set) -> int:
    """Start reducing a list of tensors as one operation; ``synchronize`` returns a list of new tensors."""
    with _refusals(name, process_set):
        op = _op(op, average, "grouped_allreduce_async")
        tensors = _checked(list(tensors), "grouped_allreduce_async", False, prescale_factor, postscale_factor)
    return _submit(tensors, _copies(tensors), name, op, prescale_factor, postscale_factor, process_set,
                   single=False)


def grouped_allreduce_async_(tensors, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0,
                             process_set=global_process_set) -> int:
    """Start reducing a list of tensors in place as one operation; ``synchronize`` returns the list."""
    with _refusals(name, process_set):
        op = _op(op, average, "grouped_allreduce_async_")
        tensors = _checked(list(tensors), "grouped_allreduce_async_", True, prescale_factor, postscale_factor)
    return _submit(tensors, tensors, name, op, prescale_factor, postscale_factor, process_set, single=False)


def grouped_allreduce_(tensors, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0,
                       process_set=global_process_set) -> list:
    """Reduce a list of tensors in place, as one operation; returns the list.

    >>> import ringtrain.horovod as hvd; from mpi4py import MPI
    >>> hvd.init(MPI.COMM_SELF); hvd.grouped_allreduce_([torch.ones(1), torch.zeros(2)])
    [tensor([1.]), tensor([0., 0.])]
    >>> hvd.shutdown()
    """
    return synchronize(grouped_allreduce_async_(tensors, average, name, op, prescale_factor, postscale_factor,
                                                process_set))


class _GroupedAllreduce(torch.autograd.Function):
    """grouped_allreduce as an autograd function: backward reduces the gradients as one group."""

    @staticmethod
    def forward(ctx, name, op, prescale, postscale, process_set, *tensors):
        ctx.options = (op, prescale, postscale, process_set)
        return tuple(synchronize(grouped_allreduce_async(list(tensors), None, name, op, prescale, postscale,
                                                         process_set)))

    @staticmethod
    def backward(ctx, *grads):
        op, prescale, postscale, process_set = ctx.options
        reduced = grouped_allreduce(list(grads), op=op, prescale_factor=prescale, postscale_factor=postscale,
                                    process_set=process_set)
        return (None, None, None, None, None, *reduced)


def grouped_allreduce(tensors, average=None, name=None, compression=_NO_COMPRESSION, op=None, prescale_factor=1.0,
                      postscale_factor=1.0, process_set=global_process_set) -> list:
    """Reduce a list of tensors as one operation; returns a list of new tensors. Differentiable.

    >>> import ringtrain.horovod as hvd; from mpi4py import MPI
    >>> hvd.init(MPI.COMM_SELF); hvd.grouped_allreduce([torch.ones(1), torch.ones(2)], op=hvd.Sum)
    [tensor([1.]), tensor([1., 1.])]
    >>> hvd.shutdown()
    """
    with _refusals(name, process_set):
        op = _op(op, average, "grouped_allreduce")
    tensors = list(tensors)
    contexts = [None] * len(tensors)
    if compression is not None:
        tensors, contexts = map(list, zip(*[compression.compress(t) for t in tensors])) if tensors else ([], [])
    reduced = _GroupedAllreduce.apply(name, op, prescale_factor, postscale_factor, process_set, *tensors)
    if compression is not None:
        return [compression.decompress(t, c) for t, c in zip(reduced, contexts)]
    return list(reduced)
