"""Tensor fusion: consecutive queued allreduces with the same op and factors run as one reduction.

Horovod fuses the small tensors that are ready in one cycle into one buffer,
because a reduction's cost on small messages is mostly latency. Here the
engine's thread, when it takes an operation that can fuse, looks at what is
queued behind it: the operations with the same ``Fusion.key`` that follow it
directly, up to agreement.WINDOW of them and FUSION_BYTES in all. The ranks'
queues differ in timing, so the agreement round decides how many of them run
together: the longest prefix that every rank has queued and that agrees, name
by name (agreement.py). A batch then makes one reduction over all its
buffers (each dtype laid end to end), and one failure flag.
"""
from typing import NamedTuple

# Horovod's HOROVOD_FUSION_THRESHOLD default is 128 MiB; half keeps the copy into the fused buffer cheap to hold.
FUSION_BYTES = 64 << 20


class Fusion(NamedTuple):
    """How an operation joins a fused batch."""

    key: tuple
    """Operations fuse only with the same key (the op and its scale factors)."""
    buffers: list
    """The tensors it reduces in place."""
    reduce: object
    """``reduce(comm, buffers)``: reduces any list of buffers of this key in place, as one collective per dtype."""
    result: object
    """What ``synchronize`` returns once the buffers are reduced."""


def nbytes(fusion: Fusion) -> int:
    return sum(t.numel() * t.element_size() for t in fusion.buffers)


def batch(first, queued, window: int) -> list:
    """``first`` and the operations right behind it in ``queued`` that fuse with it (at most ``window``)."""
    ops = [first]
    if first.fusion is None:
        return ops
    total = nbytes(first.fusion)
    for op in queued:
        if len(ops) == window or op.fusion is None or op.fusion.key != first.fusion.key:
            break
        total += nbytes(op.fusion)
        if total > FUSION_BYTES:
            break
        ops.append(op)
    return ops


def fused_body(fusions: list):
    """One body reducing every buffer of ``fusions`` (all of one key) together."""
    buffers = [t for f in fusions for t in f.buffers]
    return lambda comm: fusions[0].reduce(comm, buffers)
