"""Node-aware allgather and reduce-scatter with the pieces in rank order, as torch lays them out.

``hierarchical_allgather`` spreads the pieces ``hierarchical_reduce_scatter``
owns, which are not in rank order. torch's allgather puts rank r's piece at
``r * k``, and its reduce-scatter leaves piece r on rank r.

Allgather. On N nodes of L ranks each, local rank j of every node first
allgathers its own piece with the j-th ranks of the other nodes (its cross
communicator: one ring of N per j, all L at once, over the links), then the
node's ranks allgather what they hold over shared memory, and a copy puts each
piece at its rank's place. Each node sends (N-1)L pieces over its link, the
least possible (every other node needs this node's L pieces), against the
flat ring's (NL-1) pieces across the busiest link: 1.5x fewer at 2 x 2.

Where each node's ranks are consecutive (the usual block placement) no copy
is needed: the inside phase gathers straight into each node's block of the
output, and the node's own pieces are gathered there while the links carry
the others'.

Pieces are moved as bytes, so every dtype takes this path.

Reduce-scatter, the same two phases the other way round: inside each node,
an MPI reduce-scatter over shared memory leaves local rank j the node's sum
of the pieces of every node's j-th rank; across nodes, the j-th ranks'
ring reduce-scatter leaves each its own piece, summed over every node. The
links carry (N-1)L pieces per node again, against (NL-1). Floating sums
only, in the buffer's dtype (float32 or float64): the 16-bit types take the
flat ring, which widens them.

Nodes of different sizes take the flat ring (``node_grid`` returns None).
"""
import numpy as np
from mpi4py import MPI

from . import waiting, workspace
from .comm import private
from .ring import ring_allgather, ring_reduce_scatter
from .topology import node_groups


def node_grid(comm: MPI.Comm) -> np.ndarray | None:
    """``grid[m, j]``: the rank (in ``comm``) of local rank j on node m, nodes in cross-rank order; None where
    the nodes differ in size or there is one node. Collective.

    >>> node_grid(MPI.COMM_SELF) is None  # one node
    True
    """
    groups = node_groups(comm)
    if groups.nodes < 2 or groups.width != groups.widest or groups.widest < 2:
        return None
    places = np.array(comm.allgather((groups.cross.Get_rank(), groups.local.Get_rank())), dtype=np.int64)
    grid = np.empty((groups.nodes, groups.widest), dtype=np.int64)
    grid[places[:, 0], places[:, 1]] = np.arange(comm.Get_size())
    return grid


def node_aware_allgather(comm: MPI.Comm, flat: np.ndarray, grid: np.ndarray) -> None:
    """Fill ``flat`` (1-D uint8, n equal pieces, this rank's already in place) with every rank's piece.

    ``grid`` is ``node_grid(comm)``. Collective.
    """
    groups = node_groups(comm)
    nodes, width = grid.shape
    n, me = comm.Get_size(), comm.Get_rank()
    k = flat.size // n
    if k and np.array_equal(grid.reshape(-1), np.arange(n)):
        _in_blocks(groups, flat, nodes, width, k, me)
    else:
        _through_rows(groups, flat, grid, k, me)


def _through_rows(groups, flat: np.ndarray, grid: np.ndarray, k: int, me: int) -> None:
    """Any placement of ranks on nodes: gather into rows of (local rank, node), then copy each piece to its place."""
    nodes, width = grid.shape
    # Across nodes: the j-th ranks' pieces, node by node (the cross ring's chunk m is node m's).
    across = workspace.get("gather-across", np.uint8, nodes * k)[:nodes * k]
    m = groups.cross.Get_rank()
    across[m * k:(m + 1) * k] = flat[me * k:(me + 1) * k]
    ring_allgather(private(groups.cross), across)
    # Inside the node: every local rank's row of pieces, in local-rank order: (width, nodes, k).
    rows = workspace.get("gather-rows", np.uint8, width * nodes * k)[:width * nodes * k]
    waiting.allgather(private(groups.local), across, rows)
    # rows[j, m] is the piece of rank grid[m, j].
    if k:
        flat.reshape(-1, k)[grid.T.reshape(-1)] = rows.reshape(width * nodes, k)

def _in_blocks(groups, flat: np.ndarray, nodes: int, width: int, k: int, me: int) -> None:
    """Node m's ranks are m*width .. (m+1)*width - 1: gather each node's pieces straight into its block."""
    local = private(groups.local)
    m = groups.cross.Get_rank()
    blocks = flat.reshape(nodes, width * k)
    # This node's pieces over shared memory, in the background of the links' phase (the ring's polite
    # waits drive MPI's progress, which advances this request too).
    requests = [local.Iallgather(MPI.IN_PLACE, blocks[m])]
    across = workspace.get("gather-across", np.uint8, nodes * k)[:nodes * k]
    across[m * k:(m + 1) * k] = flat[me * k:(me + 1) * k]
    ring_allgather(private(groups.cross), across)
    requests += [local.Iallgather(across[o * k:(o + 1) * k], blocks[o]) for o in range(nodes) if o != m]
    waiting.wait_all(requests)


def node_aware_reduce_scatter(comm: MPI.Comm, flat: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Sum ``flat`` (1-D float32 or float64, n equal pieces) over ``comm``; returns this rank's summed piece
    (a view of scratch memory, valid until the next collective on this thread). Collective.

    ``grid`` is ``node_grid(comm)``.
    """
    groups = node_groups(comm)
    nodes, width = grid.shape
    k = flat.size // comm.Get_size()
    # Column order: every node's j-th rank's piece together, for j in local-rank order: (width, nodes, k).
    columns = workspace.get("scatter-columns", flat.dtype, flat.size)[:flat.size].reshape(width * nodes, k)
    np.take(flat.reshape(-1, k), grid.T.reshape(-1), axis=0, out=columns)
    # Inside the node: local rank j gets the node's sum of column j (every node's j-th piece).
    mine = workspace.get("scatter-mine", flat.dtype, nodes * k)[:nodes * k]
    waiting.wait_all([private(groups.local).Ireduce_scatter_block(columns.reshape(-1), mine, MPI.SUM)])
    # Across nodes: node m's piece of column j ends, summed over the nodes, on node m's j-th rank.
    lo, hi = ring_reduce_scatter(private(groups.cross), mine)
    return mine[lo:hi]
