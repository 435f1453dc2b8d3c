"""Where each rank sits in P pipeline ranks x D data-parallel replicas, and the communicators between them.

Ranks are placed stage-major: rank = stage x D + replica. A stage's D
replicas are neighbouring ranks, which launchers place on one node, so the
gradient averaging (every step, the whole stage's gradients) stays on
shared memory while only activations, point to point, cross nodes; that is
the layout that wins on slow links.

With V stages per rank (interleaved schedules) rank position s holds
virtual stages s, s + P, ..., s + (V - 1) P, as torch's interleaved schedules
expect.
"""
from dataclasses import dataclass

import torch.distributed as dist
from mpi4py import MPI


@dataclass
class Layout:
    ranks: int
    """Pipeline ranks, P."""
    replicas: int
    """Data-parallel replicas, D."""
    per_rank: int
    """Virtual stages per pipeline rank, V."""
    rank: int

    @property
    def position(self) -> int:
        """This rank's place along its pipeline, 0 .. P-1."""
        return self.rank // self.replicas

    @property
    def replica(self) -> int:
        return self.rank % self.replicas

    @property
    def stages(self) -> int:
        return self.ranks * self.per_rank

    def stages_of(self, position: int) -> list[int]:
        return [position + v * self.ranks for v in range(self.per_rank)]

    @property
    def mine(self) -> list[int]:
        return self.stages_of(self.position)

    def world_rank(self, position: int, replica: int) -> int:
        return position * self.replicas + replica

    def pipeline_ranks(self, replica: int) -> list[int]:
        return [self.world_rank(s, replica) for s in range(self.ranks)]


class Communicators:
    """MPI: ``pipeline`` (this replica's P ranks, by position), ``replicas`` (this position's D ranks),
    ``tied`` (the first and last position of this replica; None elsewhere, or with one position).
    torch: ``group``, this replica's pipeline as the torch group torch.distributed.pipelining sends on.
    Collective over ``comm``: every rank makes every replica's torch group, as torch requires."""

    def __init__(self, layout: Layout, comm: MPI.Comm):
        self.pipeline = comm.Split(layout.replica, layout.position)
        self.replicas = comm.Split(layout.position, layout.replica)
        ends = layout.ranks > 1 and layout.position in (0, layout.ranks - 1)
        self.tied = comm.Split(layout.replica if ends else MPI.UNDEFINED, layout.position)
        # torch makes a group collectively: every rank makes every replica's, and keeps its own.
        groups = [dist.new_group(ranks=layout.pipeline_ranks(d)) for d in range(layout.replicas)]
        self.group = groups[layout.replica]

    def free(self) -> None:
        for c in (self.pipeline, self.replicas, self.tied):
            if c != MPI.COMM_NULL:
                c.Free()
        self.pipeline = self.replicas = self.tied = MPI.COMM_NULL
        if self.group is not None and dist.is_initialized():
            dist.destroy_process_group(self.group)  # a rank holds only its own replica's group
        self.group = None
