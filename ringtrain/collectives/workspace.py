"""Scratch buffers that persist across calls, so a collective allocates nothing per step.

Each thread has its own (the trainer's communication thread and the main
thread never share scratch space). A buffer grows to the largest request seen
and is then reused; ``get`` returns a view of the requested length.

A thread's buffers are freed when the thread ends (they live in its
``threading.local``): the reducer's communication thread, which makes nearly
all of ringtrain's calls, ends when the reducer closes. So there is no call to
free them by hand; the main thread's, from collectives called directly, last
as long as the process.
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

