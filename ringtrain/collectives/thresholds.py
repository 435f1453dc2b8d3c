"""The message sizes where an automatic choice changes algorithm: one table, and the choices that read it.

``choose_algorithm`` is the only place allreduce's sizes are compared (allreduce
calls it too), and ``choose_broadcast`` the only place broadcast's are. The
table is read from the environment at import, before the command line checks
the environment: a bad value falls back to its default here, and start-up
refuses it with one line (environment.py, which also holds the defaults and
why they were chosen). A test that needs other sizes replaces ``THRESHOLDS``:

    monkeypatch.setattr(thresholds, "THRESHOLDS", dataclasses.replace(thresholds.THRESHOLDS, ring_min_bytes=0))
"""
import dataclasses
import os

from ..environment import value_or_default


@dataclasses.dataclass(frozen=True, slots=True)
class Thresholds:
    """Sizes in bytes from which an automatic choice takes the algorithm named."""

    ring_min_bytes: int
    """allreduce: the ring from here, native MPI below (RINGTRAIN_RING_MIN_BYTES, 16 MiB)."""
    hierarchical_min_bytes: int
    """allreduce on a two-level topology: the node-aware ring from here (RINGTRAIN_HIERARCHICAL_MIN_BYTES, 1 MiB)."""
    chain_min_bytes: int
    """broadcast: the pipelined chain from here, native MPI below (RINGTRAIN_CHAIN_MIN_BYTES, 1 MiB)."""

    @classmethod
    def from_environment(cls, environ=os.environ) -> "Thresholds":
        """The table the RINGTRAIN_*_MIN_BYTES variables set (their defaults where unset or not allowed).

        >>> Thresholds.from_environment({"RINGTRAIN_RING_MIN_BYTES": "4096"}).ring_min_bytes
        4096
        """
        return cls(ring_min_bytes=value_or_default("RINGTRAIN_RING_MIN_BYTES", environ),
                   hierarchical_min_bytes=value_or_default("RINGTRAIN_HIERARCHICAL_MIN_BYTES", environ),
                   chain_min_bytes=value_or_default("RINGTRAIN_CHAIN_MIN_BYTES", environ))


THRESHOLDS = Thresholds.from_environment()


def choose_algorithm(nbytes: int, size: int, ring_min_bytes: int | None = None,
                     two_level: bool | None = False) -> str:
    """The algorithm an automatic allreduce runs for a message of ``nbytes`` on ``size`` ranks.

    With the default ``two_level=False`` this is FLAT_AUTO's choice ("mpi" or
    "ring"). ``two_level=True``: the ranks span several nodes, with several
    ranks on some node (topology.NodeGroups.two_level), and NODE_AWARE_AUTO
    takes the node-aware ring from ``hierarchical_min_bytes``.
    ``two_level=None``: not known yet; the answer is "hierarchical" wherever
    the topology would decide, and the caller asks again once it knows (so
    that a small message, which the topology never changes, costs one call).
    ``ring_min_bytes`` replaces the table's for this call.

    >>> choose_algorithm(4, 2), choose_algorithm(64 << 20, 2), choose_algorithm(4 << 20, 4, two_level=True)
    ('mpi', 'ring', 'hierarchical')
    """
    # Every small allreduce passes here: the common case ("mpi") takes two comparisons.
    table = THRESHOLDS
    if size < 2:
        return "mpi"
    if two_level is not False and nbytes >= table.hierarchical_min_bytes:
        return "hierarchical"
    return "ring" if nbytes >= (table.ring_min_bytes if ring_min_bytes is None else ring_min_bytes) else "mpi"


def choose_broadcast(nbytes: int) -> str:
    """The algorithm an automatic broadcast (BROADCAST_AUTO) runs for a message of ``nbytes``.

    >>> choose_broadcast(4), choose_broadcast(64 << 20)
    ('mpi', 'chain')
    """
    return "chain" if nbytes >= THRESHOLDS.chain_min_bytes else "mpi"
