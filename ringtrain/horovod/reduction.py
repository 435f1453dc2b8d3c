"""Horovod's reduce ops on flat CPU tensors: scaling, the reduction across ranks, and what a joined rank adds.

One function, ``reduce_``, reduces a list of same-dtype contiguous tensors in
place as Horovod does on CPU:

- ``prescale`` multiplies each rank's contribution before the reduction and
  ``postscale`` the result after it. Floats scale in their own precision
  (float16 and bfloat16 in float32, then rounded); integers in float64, the
  product truncated toward zero, as a C++ cast does.
- Sum and Average go through ``ringtrain.allreduce`` (float16 and bfloat16
  are summed in float32 and rounded once). Average divides the sum by the
  set's size, every rank counted, also ranks that have joined (Horovod's
  join); integers divide with floor, as torch's ``floor_divide`` does.
- Min, Max and Product go through MPI_Allreduce (16-bit floats in float32),
  as do the integer types ringtrain does not carry (int8, uint8, int16).

A rank inside ``join`` contributes ``neutral(op)``: zeros for Sum and Average,
+inf/-inf (or the integer extremes) for Min/Max, ones for Product, so that the
others reduce over the ranks that still have data.
"""
import torch
from mpi4py import MPI

import ringtrain

from .basics import Average, Max, Min, Product, Sum

_RINGTRAIN_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64}
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_MPI_OPS = {Sum: MPI.SUM, Average: MPI.SUM, Min: MPI.MIN, Max: MPI.MAX, Product: MPI.PROD}
SUPPORTED_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
                    torch.float32, torch.float64)
"""What Horovod's allreduce takes on CPU (bool and complex are refused)."""


def scale_(t: torch.Tensor, factor: float) -> None:
    """Multiply ``t`` by ``factor`` in place, in Horovod's precision for its dtype."""
    if factor == 1.0:
        return
    if t.is_floating_point():
        if t.dtype in _LOW_PRECISION:
            t.copy_(t.float() * torch.tensor(factor, dtype=torch.float32))
        else:
            t.mul_(torch.tensor(factor, dtype=t.dtype))
    else:
        t.copy_((t.double() * factor).to(t.dtype))  # the cast truncates toward zero


def reduce_(comm: MPI.Comm, tensors: list, op: int, prescale: float = 1.0, postscale: float = 1.0) -> None:
    """Reduce ``tensors`` (contiguous CPU tensors of one dtype) in place across ``comm``.

    >>> x = torch.arange(3.0); reduce_(MPI.COMM_SELF, [x], Sum, postscale=2.0); x
    tensor([0., 2., 4.])
    """
    if not tensors:
        return
    flat = tensors[0].view(-1) if len(tensors) == 1 else torch.cat([t.reshape(-1) for t in tensors])
    scale_(flat, prescale)
    _reduce_flat(comm, flat, op)
    if op == Average:
        n = comm.Get_size()
        if flat.is_floating_point():
            flat.div_(n)
        else:
            flat.copy_(flat.div(n, rounding_mode="floor"))
    scale_(flat, postscale)
    if len(tensors) > 1:
        offset = 0
        for t in tensors:
            t.view(-1).copy_(flat[offset:offset + t.numel()])
            offset += t.numel()


def _reduce_flat(comm: MPI.Comm, flat: torch.Tensor, op: int) -> None:
    if comm.Get_size() == 1 or flat.numel() == 0:
        return
    if op in (Sum, Average) and flat.dtype in _RINGTRAIN_DTYPES:
        # The agreement already compared dtype and shape on every rank: skip ringtrain's own handshake.
        ringtrain.allreduce(flat, op="sum", comm=comm, check=False)
        return
    if flat.dtype in _LOW_PRECISION:  # MPI has no 16-bit float: reduce in float32, round once
        wide = flat.float()
        comm.Allreduce(MPI.IN_PLACE, wide.numpy(), _MPI_OPS[op])
        flat.copy_(wide)
        return
    comm.Allreduce(MPI.IN_PLACE, flat.numpy(), _MPI_OPS[op])


def neutral(shape, dtype: torch.dtype, op: int) -> torch.Tensor:
    """What a joined rank contributes: the identity of ``op``, so the others reduce over their own data."""
    if op in (Sum, Average):
        return torch.zeros(shape, dtype=dtype)
    if op == Product:
        return torch.ones(shape, dtype=dtype)
    info = torch.finfo(dtype) if dtype.is_floating_point else torch.iinfo(dtype)
    fill = (float("inf") if op == Min else float("-inf")) if dtype.is_floating_point else \
        (info.max if op == Min else info.min)
    return torch.full(shape, fill, dtype=dtype)


def check_dtype(what: str, t: torch.Tensor) -> None:
    """TypeError for a tensor Horovod cannot reduce; ValueError for one not on the CPU."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{what}: dtype {t.dtype} is not supported; use one of "
                        f"{', '.join(str(d).removeprefix('torch.') for d in SUPPORTED_DTYPES)}")
    if t.device.type != "cpu":
        raise ValueError(f"{what}: tensor is on {t.device}; ringtrain.horovod reduces CPU tensors only")


def numpy_dtype_name(dtype: torch.dtype) -> str:
    """The dtype's short name for descriptions and messages (``float32``)."""
    return str(dtype).removeprefix("torch.")

