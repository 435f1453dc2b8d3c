"""The names of the collectives' reduction ops and algorithms, and of the automatic choices.

Two automatic choices pick an allreduce algorithm by message size, and each has
one name here:

- ``NODE_AWARE_AUTO`` ("auto", allreduce's default): native MPI for small
  messages, the ring for large ones, and the node-aware ring where the ranks
  span several nodes with several ranks on some node.
- ``FLAT_AUTO``: the same choice as if every rank sat on one node, never the
  node-aware ring. ``allreduce`` does not take it: a caller that wants it asks
  ``choose_algorithm(nbytes, size)`` and passes the answer, as
  ``GradientReducer(node_aware=False)`` does.

``BROADCAST_AUTO`` ("auto", broadcast's default) picks the pipelined chain
for large messages. Which sizes switch is ``thresholds.THRESHOLDS``.

>>> NODE_AWARE_AUTO in ALGORITHMS, FLAT_AUTO in ALGORITHMS
(True, False)
"""
OPS = ("sum", "mean")

NODE_AWARE_AUTO = "auto"
FLAT_AUTO = "flat auto"
BROADCAST_AUTO = "auto"

ALGORITHMS = (NODE_AWARE_AUTO, "ring", "recursive_doubling", "ps", "mpi", "hierarchical")
"""What ``allreduce(algorithm=...)`` accepts."""
BROADCAST_ALGORITHMS = (BROADCAST_AUTO, "chain", "mpi")
"""What ``broadcast(algorithm=...)`` accepts."""
SCATTER_ALGORITHMS = ("ring", "hierarchical")
"""What ``reduce_scatter``, ``allgather`` and ``owned_bounds`` accept."""

# Derived, so that a new algorithm of any collective is one the handshake can name.
RUNNABLE = tuple(dict.fromkeys(a for a in ALGORITHMS + BROADCAST_ALGORITHMS + SCATTER_ALGORITHMS
                               if a not in (NODE_AWARE_AUTO, BROADCAST_AUTO)))
"""Every algorithm a collective can run once its automatic choice is made: what the handshake compares."""
