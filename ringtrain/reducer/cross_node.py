"""Compression only where the link is slow: exact sums inside each node, a compressed mean across them.

A compressed bucket on a two-level topology (several nodes, several ranks on
some node) is averaged by the node-aware ring (collectives/hierarchical.py)
with its cross-node phase replaced by the compressor:

1. inside each node, an exact float32 ring reduce-scatter over shared memory
   leaves local rank j with block j of the node's sum;
2. the owners of block j, one per node, average it with the compressor
   (``allreduce_mean`` over their cross-node communicator): the only bytes
   that cross the link, and the only ones compressed;
3. an exact intra-node allgather spreads the result, which is divided by the
   world size.

Numerics. The compressor sees the node's *sum* of block j, not one rank's
gradient, so it compresses once per node instead of once per rank, and each
rank compresses 1/L of the bucket (L ranks per node) instead of all of it.
Error feedback keeps the cross-node error of that block, on the rank that owns
it: residuals are per (node, block), and a rank's residual has the size of its
block. The intra-node sums are exact up to float32 rounding in ring order.

PowerSGD needs whole matrices, so for a compressor with ``layered`` set the
blocks are cut at parameter boundaries (balanced greedily); the others take
the balanced layout. A block may be empty (fewer parameters than ranks per
node); then its cross ring has nothing to send, on every node alike.
"""
import numpy as np

from ..collectives.layout import chunk_bounds


def node_blocks(param_bounds: list[tuple[int, int]], width: int, layered: bool) -> list[tuple[int, int]]:
    """Each local rank's ``(lo, hi)`` block of a bucket: balanced, or cut at parameter ends if ``layered``.

    >>> node_blocks([(0, 4), (4, 6), (6, 10)], 2, layered=False)
    [(0, 5), (5, 10)]
    >>> node_blocks([(0, 4), (4, 6), (6, 10)], 2, layered=True)
    [(0, 4), (4, 10)]
    """
    total = param_bounds[-1][1]
    if not layered:
        return [chunk_bounds(total, width, j) for j in range(width)]
    ends = [hi for _, hi in param_bounds]
    cuts = [0]
    for j in range(1, width):
        target = total * j / width
        # The parameter end nearest the ideal cut, never before the previous cut.
        candidates = [e for e in ends if e >= cuts[-1]] or [total]
        cuts.append(min(candidates, key=lambda e: (abs(e - target), e)))
    cuts.append(total)
    return [(cuts[j], cuts[j + 1]) for j in range(width)]


def block_layout(param_bounds, shapes, block: tuple[int, int]) -> list[tuple[int, int, tuple]]:
    """The ``(lo, hi, shape)`` of each parameter inside ``block``, relative to its start (for set_layout)."""
    lo, hi = block
    return [(a - lo, b - lo, shape) for (a, b), shape in zip(param_bounds, shapes) if lo <= a and b <= hi and b > a]


def compressed_cross_sum(compressor):
    """A ``cross_allreduce`` for hierarchical_allreduce: the nodes' sum of a block, through ``compressor``."""
    def cross_sum(cross, block: np.ndarray) -> None:
        mean = compressor.allreduce_mean(block, cross)
        np.multiply(mean, cross.Get_size(), out=block)
    return cross_sum
