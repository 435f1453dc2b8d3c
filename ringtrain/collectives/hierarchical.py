"""Two-level (node-aware) allreduce: reduce-scatter inside each node, a ring across nodes, allgather inside.

With N nodes of L ranks each, local rank j of every node owns block j of L
after the intra-node reduce-scatter; the N owners of block j (one per node)
then allreduce it over their own cross-node ring, all L rings at once, and an
intra-node allgather spreads the result. Each node sends 2(N-1)/N of the
buffer over its link, against 2(NL-1)/(NL) for a flat ring over all ranks.

Nodes of different sizes: with W the fewest ranks any node has, a node's
ranks from W on first fold their buffer into local rank ``j mod W`` (over
shared memory), the first W ranks of every node run the scheme above, and
the result goes back to the folded ranks. Every value is computed once, by its
block's owner, and copied from there, so all ranks end with the same bits.

The reduce-scatter alone stops after the cross-node reduce-scatter: rank
(node i, local rank j) then owns piece i of block j, so the owned pieces are
not in rank order (``hierarchical_bounds``), and folded ranks own nothing.

The phases run one after another: overlapping them by segment was measured to
gain at most ~7% at 1 Gbit/s, where the link phase dominates (benchmarks/README.md).
"""
import numpy as np
from mpi4py import MPI

from ..constants import TAG_NODE_FOLD
from . import waiting, workspace
from .comm import private
from .layout import chunk_bounds
from .ring import ring_allgather, ring_reduce_scatter
from .topology import NodeGroups, node_groups


def _ring_allreduce(cross: MPI.Comm, chunk: np.ndarray) -> None:
    ring_reduce_scatter(cross, chunk)
    ring_allgather(cross, chunk)


def hierarchical_allreduce(comm: MPI.Comm, a: np.ndarray, cross_allreduce=None, bounds=None) -> None:
    """Sum ``a`` (1-D, contiguous) over ``comm`` in place, node-aware. Collective.

    ``cross_allreduce(cross_comm, block)`` replaces the cross-node ring: it must
    leave in ``block`` the sum over nodes of each node's block (the reducer passes
    a compressed one); it is called only when there are several nodes.
    ``bounds`` cuts ``a`` into the node's blocks, one per local rank below the
    width (balanced by default; the reducer cuts at parameter boundaries).

    >>> x = np.arange(3.0); hierarchical_allreduce(MPI.COMM_SELF, x); x
    array([0., 1., 2.])
    """
    groups = node_groups(comm)
    local = private(groups.local)
    folded = _fold_in(groups, local, a)
    if folded is None:
        waiting.recv(local, a, local.Get_rank() % groups.width, TAG_NODE_FOLD)
        return
    core = private(groups.core)
    lo, hi = ring_reduce_scatter(core, a, bounds=bounds)
    if groups.nodes > 1 and hi > lo:  # an empty block is empty on every rank of its cross ring
        (cross_allreduce or _ring_allreduce)(private(groups.cross), a[lo:hi])
    ring_allgather(core, a, bounds=bounds)
    _fold_out(local, a, folded)


def hierarchical_reduce_scatter(comm: MPI.Comm, a: np.ndarray) -> tuple[int, int]:
    """Sum ``a`` over ``comm`` node-aware; returns the bounds of the piece this rank owns. Collective.

    >>> hierarchical_reduce_scatter(MPI.COMM_SELF, np.ones(3))
    (0, 3)
    """
    groups = node_groups(comm)
    local = private(groups.local)
    if _fold_in(groups, local, a) is None:
        return 0, 0
    lo, hi = ring_reduce_scatter(private(groups.core), a)
    clo, chi = ring_reduce_scatter(private(groups.cross), a[lo:hi])
    return lo + clo, lo + chi


def hierarchical_allgather(comm: MPI.Comm, a: np.ndarray) -> None:
    """The inverse of ``hierarchical_reduce_scatter``: every rank's owned piece to every rank. Collective.

    >>> hierarchical_allgather(MPI.COMM_SELF, np.ones(3))
    """
    groups = node_groups(comm)
    local = private(groups.local)
    j = local.Get_rank()
    if j >= groups.width:
        waiting.recv(local, a, j % groups.width, TAG_NODE_FOLD)
        return
    lo, hi = chunk_bounds(a.size, groups.width, j)
    ring_allgather(private(groups.cross), a[lo:hi])
    ring_allgather(private(groups.core), a)
    _fold_out(local, a, range(j + groups.width, local.Get_size(), groups.width))


def hierarchical_bounds(groups: NodeGroups, local_rank: int, node: int, count: int) -> tuple[int, int]:
    """The piece of a ``count``-element buffer that ``hierarchical_reduce_scatter`` leaves on a rank.

    ``node`` is the rank's index in its cross communicator. Folded ranks own nothing.
    """
    if local_rank >= groups.width:
        return 0, 0
    lo, hi = chunk_bounds(count, groups.width, local_rank)
    clo, chi = chunk_bounds(hi - lo, groups.nodes, node)
    return lo + clo, lo + chi


def _fold_in(groups: NodeGroups, local: MPI.Comm, a: np.ndarray) -> range | None:
    """Fold the ranks beyond the width into their partners; None on a folded rank (after sending)."""
    j, width = local.Get_rank(), groups.width
    if j >= width:  # a rank beyond the smallest node's size: its partner does its share
        waiting.send(local, a, j % width, TAG_NODE_FOLD)
        return None
    folded = range(j + width, local.Get_size(), width)
    if folded:
        scratch = workspace.get("fold", a.dtype, a.size)
        for extra in folded:  # in rank order, so the sum's rounding is the same every time
            waiting.recv(local, scratch, extra, TAG_NODE_FOLD)
            np.add(a, scratch, out=a)
    return folded


def _fold_out(local: MPI.Comm, a: np.ndarray, folded: range) -> None:
    for extra in folded:
        waiting.send(local, a, extra, TAG_NODE_FOLD)
