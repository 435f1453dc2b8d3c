"""torch.distributed for the layouts that build on it (--zero 3's FSDP2, --pipeline-stages' pipelining).

Their groups are torch.distributed's, whose world is COMM_WORLD: the run's
communicator must hold every rank. torch.distributed is started on the
ringtrain backend if nothing started it, and left running after the run,
because what it trained (FSDP2's shards) still needs it.
"""
import torch.distributed as dist
from mpi4py import MPI

from ..fault.errors import UsageError


def ensure_started(comm: MPI.Comm, flag: str, instead: str) -> bool:
    """Start torch.distributed on the ringtrain backend over COMM_WORLD unless it is running; True if this call
    started it. Refuses (on every rank alike) a ``comm`` that is not the whole job. Collective."""
    world = MPI.COMM_WORLD.Get_size()
    if comm.Get_size() != world:
        raise UsageError(f"{flag} runs over all {world} ranks of the job (torch.distributed's world), and this "
                         f"run's communicator has {comm.Get_size()} — run it on COMM_WORLD, or use {instead}",
                         agreed=True)
    if MPI.Comm.Compare(comm, MPI.COMM_WORLD) not in (MPI.IDENT, MPI.CONGRUENT):
        raise UsageError(f"{flag}: this run's communicator orders the ranks otherwise than COMM_WORLD, whose order "
                         f"torch.distributed's groups take — run it on COMM_WORLD (or a Dup of it), or use {instead}",
                         agreed=True)
    if dist.is_initialized():
        return False
    import ringtrain.distributed
    ringtrain.distributed.init()
    return True
