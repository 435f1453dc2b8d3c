"""Node groups: which ranks share a node's memory, and which talk across nodes.

A cluster has two levels: many ranks per node over shared memory, and a slow
link between nodes. ``node_groups(comm)`` returns, among others, two communicators:

- ``local``: the ranks on this rank's node, from ``Split_type(COMM_TYPE_SHARED)``
  (MPICH's hydra gives each host its own node, network namespaces included);
- ``cross``: the ranks with this rank's local rank on every node, ordered by node.

``RINGTRAIN_NODE_SIZE=K`` forces nodes of K consecutive ranks instead (the last
one may be smaller), so tests on one machine can exercise every shape. Both
communicators are cached on ``comm`` as an MPI attribute, like ``private()``,
and freed with it. Creating them is collective.
"""
from typing import NamedTuple

import numpy as np
from mpi4py import MPI

from .. import environment

_KEYVAL = MPI.Comm.Create_keyval()


def forced_node_size() -> int | None:
    """RINGTRAIN_NODE_SIZE as a whole number >= 1, or None when unset; a UsageError (a ValueError) when bad."""
    return environment.value("RINGTRAIN_NODE_SIZE")


class NodeGroups(NamedTuple):
    local: MPI.Comm
    """The ranks of this rank's node."""
    cross: MPI.Comm
    """The ranks with this rank's local rank, one per node that has it."""
    core: MPI.Comm
    """The first ``width`` ranks of this node (COMM_NULL on the others)."""
    width: int
    """The fewest ranks any node has: each node's first ``width`` ranks share the cross-node work."""
    widest: int
    """The most ranks any node has."""
    nodes: int
    """How many nodes there are."""

    @property
    def two_level(self) -> bool:
        """More than one node, and more than one rank on some node: where the node-aware ring pays."""
        return self.nodes > 1 and self.widest > 1


def cached_node_groups(comm: MPI.Comm) -> NodeGroups | None:
    """The node groups of ``comm`` if they were made already, else None. Not collective."""
    return comm.Get_attr(_KEYVAL)


def node_groups(comm: MPI.Comm) -> NodeGroups:
    """The node groups of ``comm``; created once per communicator. Collective on first use."""
    cached = comm.Get_attr(_KEYVAL)
    if cached is None:
        forced = forced_node_size()
        if forced is None:
            local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
        else:
            local = comm.Split(comm.Get_rank() // forced, key=comm.Get_rank())
        # Ordered by the rank in ``comm``, so every rank agrees on each ring's order.
        cross = comm.Split(local.Get_rank(), key=comm.Get_rank())
        # The smallest and largest node (MIN of the size and of its negative), then the node count.
        sizes = np.array([local.Get_size(), -local.Get_size()], dtype=np.int64)
        comm.Allreduce(MPI.IN_PLACE, sizes, op=MPI.MIN)
        width, widest = int(sizes[0]), int(-sizes[1])
        leaders = np.array([1 if local.Get_rank() == 0 else 0], dtype=np.int64)
        comm.Allreduce(MPI.IN_PLACE, leaders, op=MPI.SUM)
        nodes = int(leaders[0])
        core = local.Split(0 if local.Get_rank() < width else MPI.UNDEFINED, key=local.Get_rank())
        cached = NodeGroups(local, cross, core, width, widest, nodes)
        comm.Set_attr(_KEYVAL, cached)
    return cached
