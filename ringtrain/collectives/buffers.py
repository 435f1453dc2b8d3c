"""Flat numpy views of the user's buffer, and the float32 accumulator for 16-bit floats.

Collectives accept a contiguous numpy array or CPU torch tensor and reduce it in
place. Everything below works on a 1-D numpy view that shares its memory, so
torch tensors and numpy arrays take the same path and nothing is copied.

bfloat16 has no numpy dtype: its view is ``uint16`` holding the raw bits, and
the conversions to and from float32 are done on the bits here (round to nearest
even, NaN kept quiet), which matches torch's own conversion.
"""
import sys

import numpy as np

SUPPORTED = ("float16", "bfloat16", "float32", "float64", "int32", "int64")
LOW_PRECISION = ("float16", "bfloat16")  # summed in float32
# Keyed by native-order dtype: a byte-swapped dtype compares unequal, so one
# lookup checks type and byte order (it is on the path of every small allreduce).
_NUMPY = {np.dtype(n): n for n in ("float16", "float32", "float64", "int32", "int64")}


def as_flat(x, name: str = "x") -> tuple[np.ndarray, str]:
    """A 1-D view of ``x`` sharing its memory, and its dtype name (one of SUPPORTED).

    Raises TypeError or ValueError for what cannot be reduced in place. The
    result is a plain tuple: building an object here would cost a fair share
    of a small MPI_Allreduce.

    >>> data, dtype = as_flat(np.zeros((2, 3), np.float32)); data.shape, dtype
    ((6,), 'float32')
    """
    if isinstance(x, np.ndarray):
        dtype = _NUMPY.get(x.dtype)
        if dtype is None:
            raise TypeError(f"{name}: dtype {x.dtype} is not supported; use one of {', '.join(SUPPORTED)} "
                            "in native byte order")
        flags = x.flags
        if not flags.c_contiguous:
            raise ValueError(f"{name}: the array is not C-contiguous; pass np.ascontiguousarray({name}) "
                             "and copy the result back, since the reduction is in place")
        if not flags.writeable:
            raise ValueError(f"{name}: the array is read-only; the reduction is in place")
        return (x if x.ndim == 1 else x.reshape(-1)), dtype
    torch = sys.modules.get("torch")  # never import torch just to reject a list
    if torch is not None and isinstance(x, torch.Tensor):
        return _torch_flat(torch, x, name)
    raise TypeError(f"{name}: expected a numpy array or a CPU torch tensor, got {type(x).__name__}")


def _torch_flat(torch, x, name: str) -> tuple[np.ndarray, str]:
    if x.device.type != "cpu":
        raise ValueError(f"{name}: tensor is on device '{x.device}'; ringtrain's collectives reduce "
                         "CPU tensors only (move it with .cpu(), or reduce on the device with NCCL)")
    if not x.is_contiguous():
        raise ValueError(f"{name}: the tensor is not contiguous; pass {name}.contiguous() and copy "
                         "the result back, since the reduction is in place")
    if x.dtype == torch.bfloat16:
        return x.detach().reshape(-1).view(torch.int16).numpy().view(np.uint16), "bfloat16"
    dtype = str(x.dtype).removeprefix("torch.")
    if dtype not in SUPPORTED:
        raise TypeError(f"{name}: dtype {x.dtype} is not supported; use one of {', '.join(SUPPORTED)}")
    return x.detach().reshape(-1).numpy(), dtype


def widen(data: np.ndarray, dtype: str, out: np.ndarray) -> np.ndarray:
    """Copy a 16-bit float buffer into the float32 array ``out`` (same length)."""
    if dtype == "bfloat16":
        # bfloat16 is the top half of a float32: shift the bits into place.
        np.left_shift(data, 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        out[...] = data
    return out


def narrow(acc: np.ndarray, dtype: str, out: np.ndarray) -> None:
    """Round ``acc`` (float32) into the 16-bit buffer ``out`` to nearest even."""
    if dtype == "float16":
        out[...] = acc
        return
    bits = acc.view(np.uint32)
    # Round to nearest even on the 16 bits that are dropped; quiet any NaN so
    # that rounding cannot carry it into infinity.
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
    rounded >>= 16
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        rounded[nan] = (bits[nan] >> 16) | np.uint32(0x0040)
    out[...] = rounded
