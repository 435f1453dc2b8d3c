"""Bytes each node sends over its network interface, from the kernel's counters.

``/sys/class/net/IFACE/statistics/tx_bytes`` counts every byte the interface
sent, frame headers and TCP acknowledgements included, for all the node's ranks
together. One rank per node (local rank 0) reads it just before a timed loop
and again once every rank has finished it, so ``bench allreduce`` can report
the link bytes per host per operation next to the bound an algorithm should
meet. Only meaningful where the interface carries nothing else, as in the
simulated cluster (benchmarks/simcluster), whose hosts each have one eth0.
"""
import numpy as np
from mpi4py import MPI

from ..collectives.topology import node_groups
from ..fault.errors import agree


def tx_bytes(iface: str) -> int:
    with open(f"/sys/class/net/{iface}/statistics/tx_bytes") as f:
        return int(f.read())


class LinkCounter:
    """Counts what each node's ``iface`` sends between ``mark()`` and ``per_host()``. Collective to make."""

    def __init__(self, comm: MPI.Comm, iface: str):
        groups = node_groups(comm)
        self.comm, self.iface, self.nodes = comm, iface, groups.nodes
        self.leader = groups.local.Get_rank() == 0
        error = None
        if self.leader:
            try:
                tx_bytes(iface)
            except (OSError, ValueError) as e:
                error = f"--count-iface {iface}: cannot read its byte counter ({e}) — name an interface of this host"
        agree(comm, error)
        self._start = 0

    def mark(self) -> None:
        """Start counting (on each node's leader; a no-op elsewhere)."""
        if self.leader:
            self._start = tx_bytes(self.iface)

    def per_host(self, calls: int) -> list[float]:
        """Bytes each node sent per call since ``mark()``, one entry per node. Collective: call when all are done."""
        mine = np.array([(tx_bytes(self.iface) - self._start) / calls if self.leader else -1.0])
        every = np.empty(self.comm.Get_size())
        self.comm.Allgather(mine, every)
        return [float(b) for b in every if b >= 0]


def two_level_bound(nbytes: int, nodes: int) -> float:
    """The fewest bytes a node must send per allreduce of ``nbytes``: 2 (N - 1) / N of the buffer.

    >>> two_level_bound(100, 2)
    100.0
    """
    return 2 * (nodes - 1) / nodes * nbytes
