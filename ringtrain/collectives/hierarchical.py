"""Two-level (node-aware) allreduce: reduce-scatter inside each node, a ring across nodes, allgather inside.

With N nodes of L ranks each, local rank j of every node owns chunk j of L
after the intra-node reduce-scatter; the N owners of chunk j (one per node)
then allreduce it over their own cross-node ring, all L rings at once, and an
intra-node allgather spreads the result. Each node sends 2(N-1)/N of the
buffer over its link, against 2(NL-1)/(NL) for a flat ring over all ranks.

Nodes of different sizes: with W the fewest ranks any node has, a node's
ranks from W on first fold their buffer into local rank ``j mod W`` (over
shared memory), the first W ranks of every node run the scheme above, and
the result goes back to the folded ranks. Every value is computed once, by its
chunk's owner, and copied from there, so all ranks end with the same bits.

The phases run one after another here; overlapping them is left to measurements.
"""
import numpy as np
from mpi4py import MPI

from ..constants import TAG_NODE_FOLD
from . import workspace
from .comm import private
from .ring import ring_allgather, ring_reduce_scatter
from .topology import node_groups


def hierarchical_allreduce(comm: MPI.Comm, a: np.ndarray) -> None:
    """Sum ``a`` (1-D, contiguous) over ``comm`` in place, node-aware. Collective.

    >>> x = np.arange(3.0); hierarchical_allreduce(MPI.COMM_SELF, x); x
    array([0., 1., 2.])
    """
    groups = node_groups(comm)
    local = private(groups.local)
    j, width = local.Get_rank(), groups.width
    partner, folded = j % width, range(j + width, local.Get_size(), width)
    if j >= width:  # a rank beyond the smallest node's size: its partner does its share
        local.Send(a, partner, TAG_NODE_FOLD)
        local.Recv(a, partner, TAG_NODE_FOLD)
        return
    if folded:
        scratch = workspace.get("fold", a.dtype, a.size)
        for extra in folded:  # in rank order, so the sum's rounding is the same every time
            local.Recv(scratch, extra, TAG_NODE_FOLD)
            np.add(a, scratch, out=a)
    core = private(groups.core)
    lo, hi = ring_reduce_scatter(core, a)
    if groups.nodes > 1:
        mine = a[lo:hi]
        cross = private(groups.cross)
        ring_reduce_scatter(cross, mine)
        ring_allgather(cross, mine)
    ring_allgather(core, a)
    for extra in folded:
        local.Send(a, extra, TAG_NODE_FOLD)
