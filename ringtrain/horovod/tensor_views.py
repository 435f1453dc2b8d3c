"""Torch tensors as the flat buffers MPI and ringtrain's collectives move, for every CPU dtype.

Gathering, broadcasting and exchanging rows only move bytes, so any dtype
torch has (bool, float16, bfloat16, complex, the float8 kinds) travels as the
raw bytes of a contiguous tensor. ringtrain's data-moving collectives take
int32/int64 arrays, so a buffer whose length is a multiple of 8 (or 4) bytes is
handed to them as words; anything else goes to mpi4py as MPI.BYTE.

Reductions need the dtype itself: ``SUMMABLE`` lists what reducescatter adds.
"""
import numpy as np
import torch

RINGTRAIN_SUMS = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64)
"""Dtypes ringtrain's reduce_scatter and allreduce add (16-bit floats accumulate in float32)."""
MPI_SUMS = (torch.uint8, torch.int8, torch.int16, torch.complex64, torch.complex128)
"""Dtypes MPI_SUM adds natively on their numpy views."""
SUMMABLE = RINGTRAIN_SUMS + MPI_SUMS


def tensor_problem(what: str, tensor, name: str = "tensor") -> str | None:
    """Why ``tensor`` cannot be an operation's input (a sentence naming it), or None if it can.

    >>> tensor_problem("allgather", torch.zeros(2, device="meta"))
    "allgather: tensor is on device 'meta'; ringtrain.horovod moves CPU tensors only (use .cpu())"
    """
    if not isinstance(tensor, torch.Tensor):
        return f"{what}: {name} must be a torch.Tensor, got {type(tensor).__name__}"
    if tensor.layout != torch.strided:
        return f"{what}: {name} has layout {tensor.layout}; only dense (strided) tensors are supported"
    if tensor.device.type != "cpu":
        return f"{what}: {name} is on device '{tensor.device}'; ringtrain.horovod moves CPU tensors only (use .cpu())"
    return None


def dense(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` without autograd history, contiguous (a copy only where it was not)."""
    return tensor.detach().contiguous()


def byte_view(tensor: torch.Tensor) -> np.ndarray:
    """The bytes of a contiguous tensor as a 1-D uint8 numpy array sharing its memory.

    >>> byte_view(torch.ones(2, dtype=torch.float16))
    array([ 0, 60,  0, 60], dtype=uint8)
    """
    return tensor.reshape(-1).view(torch.uint8).numpy()


def word_view(tensor: torch.Tensor) -> np.ndarray | None:
    """The bytes of a contiguous tensor as int64 (or int32) words for ringtrain's collectives, or None
    where its byte length is not a multiple of 4 (or it is empty).

    >>> word_view(torch.zeros(3, dtype=torch.bool)) is None, word_view(torch.zeros(3)).dtype
    (True, dtype('int32'))
    """
    raw = byte_view(tensor)
    for word in (np.int64, np.int32):
        if raw.size and raw.size % np.dtype(word).itemsize == 0:
            return raw.view(word)
    return None


def row_bytes(tensor: torch.Tensor) -> int:
    """Bytes in one row (one index of the first dimension) of ``tensor``.

    >>> row_bytes(torch.zeros(5, 3, dtype=torch.int16))
    6
    """
    n = tensor.element_size()
    for d in tensor.shape[1:]:
        n *= d
    return n


def displacements(counts: np.ndarray) -> np.ndarray:
    """Where each of ``counts`` starts in the concatenation (exclusive prefix sum).

    >>> displacements(np.array([2, 0, 3])).tolist()
    [0, 2, 2]
    """
    out = np.zeros_like(counts)
    np.cumsum(counts[:-1], out=out[1:])
    return out
