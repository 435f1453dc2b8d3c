"""Scratch buffers that persist across calls, so a collective allocates nothing per step.

Each thread has its own (the trainer's communication thread and the main
thread never share scratch space). A buffer grows to the largest request seen
and is then reused; ``get`` returns a view of the requested length.
"""
import threading

import numpy as np

_local = threading.local()


def get(slot: str, dtype, count: int) -> np.ndarray:
    """A scratch array of ``count`` elements; its contents are undefined.

    ``slot`` separates buffers that must not alias within one collective.
    """
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    key = (slot, np.dtype(dtype))
    buf = pool.get(key)
    if buf is None or buf.size < count:
        buf = pool[key] = np.empty(max(count, 1), dtype=dtype)
    return buf[:count]


def release() -> None:
    """Free this thread's scratch buffers (for example after a very large one-off call)."""
    _local.pool = {}
