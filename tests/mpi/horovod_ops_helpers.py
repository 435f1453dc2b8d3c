"""Shared pieces of the ringtrain.horovod collective tests: the dtypes, rank-coded tensors, caught errors."""
import torch

DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
          torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128]
"""Every dtype the data-moving operations (allgather, broadcast, alltoall) must carry."""


def coded(value_rows, cols, dtype, tag=0):
    """Rows whose entries name where they came from: row i holds ``value_rows[i] * 7 + col + tag``, in ``dtype``.

    Small integers, exact in every dtype; bool keeps only their parity, still a rank-dependent pattern.
    """
    base = torch.as_tensor(value_rows, dtype=torch.int64).reshape(-1, 1) * 7 + torch.arange(cols) + tag
    if dtype == torch.bool:
        return (base % 2).to(torch.bool)
    if dtype in (torch.uint8, torch.int8):
        return (base % 100).to(dtype)
    return base.to(dtype)


def raised(call):
    """The exception ``call()`` raised, or None; for checking errors collectively after the last collective."""
    try:
        call()
    except Exception as e:  # noqa: BLE001  (the test inspects its type and message)
        return e
    return None
