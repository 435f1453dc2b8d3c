"""CPU tensors as MPI buffers: contiguous views, raw bytes, and numpy views MPI can reduce.

Moving data needs only bytes, so every dtype travels (bfloat16, bool, complex
included) as a uint8 view. A non-contiguous tensor is copied to a contiguous
one and copied back after an in-place collective.

>>> import torch
>>> t = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3).t()
>>> buf, back = contiguous(t); buf.is_contiguous(), as_bytes(buf).nbytes
(True, 12)
"""
import numpy as np
import torch


def check_cpu(tensors, what: str) -> None:
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"ringtrain backend: {what} takes tensors, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"ringtrain backend: {what} takes CPU tensors, got one on {t.device}")
        if t.is_sparse:
            raise ValueError(f"ringtrain backend: {what} takes dense tensors, got a sparse one")


def contiguous(t: torch.Tensor):
    """(a contiguous tensor with ``t``'s values, a function that copies it back into ``t``)."""
    if t.is_contiguous():
        return t, _nothing
    buf = t.contiguous()
    return buf, lambda: t.copy_(buf)


def _nothing():
    pass


def as_bytes(t: torch.Tensor) -> np.ndarray:
    """A uint8 numpy view of a contiguous tensor's memory."""
    flat = t.detach().reshape(-1)
    if flat.dtype == torch.uint8:
        return flat.numpy()
    return flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, dtype=np.uint8)


def as_array(t: torch.Tensor) -> np.ndarray:
    """A numpy view MPI can reduce (bool as uint8 0/1); a contiguous tensor of a numpy-known dtype."""
    flat = t.detach().reshape(-1)
    if flat.dtype == torch.bool:
        return flat.view(torch.uint8).numpy()
    return flat.numpy()


def same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same bytes (FSDP2 gathers with its input as its output's slice)."""
    return a.data_ptr() == b.data_ptr() and a.numel() * a.element_size() == b.numel() * b.element_size()
