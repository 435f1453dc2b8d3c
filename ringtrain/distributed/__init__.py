"""ringtrain as a torch.distributed backend: ``import ringtrain.distributed`` registers ``"ringtrain"``.

DDP, FSDP2, DeviceMesh/DTensor and ``torch.distributed.pipelining`` then run
over MPI with ringtrain's collectives underneath (process_group.py), from a
pip install, under ``mpiexec`` or ``srun``, without MASTER_ADDR::

    import torch.distributed as dist
    import ringtrain.distributed
    group = ringtrain.distributed.init()       # or dist.init_process_group("ringtrain")
    model = torch.nn.parallel.DistributedDataParallel(model)

Ranks and world size come from MPI's COMM_WORLD. torch's store (its barrier
after init with TORCH_DIST_INIT_BARRIER=1, ``new_group``'s, gloo's meeting)
is served by rank 0 over MPI (store.py); rendezvous.py makes torch's default
``env://`` fall back to it when MASTER_ADDR is unset, which is how
``init_process_group("ringtrain")`` needs no other argument.
"""
from datetime import timedelta

import torch.distributed as dist
from mpi4py import MPI

from ..fault import abort_on_uncaught_exception, check_world_size
from .comm_hooks import CompressionState, comm_hook
from .process_group import ProcessGroupRingtrain
from .rendezvous import install as _install_rendezvous
from .store import MPIStore

BACKEND = "ringtrain"


def _create(common, backend_options=None) -> ProcessGroupRingtrain:
    """torch's creator for every group: its MPI communicator, made on the group's members only."""
    world = MPI.COMM_WORLD
    ranks = list(common.global_ranks_in_group) or list(range(world.Get_size()))
    if ranks == list(range(world.Get_size())):
        check_world_size()  # a launcher with the wrong PMI starts N singletons: refuse them, as train does
        comm = world.Dup()
    else:  # MPI_Comm_create_group involves only the members, as torch calls this on members only
        comm = world.Create_group(world.Get_group().Incl(ranks))
    if comm.Get_rank() != common.group_rank or comm.Get_size() != common.group_size:
        raise RuntimeError(f"ringtrain backend: torch's group rank {common.group_rank} of {common.group_size} is "
                           f"MPI rank {comm.Get_rank()} of {comm.Get_size()}: torch's ranks must be COMM_WORLD's")
    return ProcessGroupRingtrain(comm, str(common.group_id), common.timeout.total_seconds())


if BACKEND not in dist.Backend.backend_list:
    dist.Backend.register_backend(BACKEND, _create, extended_api=True, devices=["cpu"])
_install_rendezvous()
# A rank that fails must end the job: its peers would otherwise wait for it in their next collective.
abort_on_uncaught_exception()


def init(timeout: timedelta | None = None) -> dist.ProcessGroup:
    """Start torch.distributed on the ringtrain backend over MPI's COMM_WORLD; returns the default group.

    Collective over every rank of the job. Raises RuntimeError if
    torch.distributed is already initialized (by this or another backend).
    """
    if dist.is_initialized():
        raise RuntimeError(f"ringtrain.distributed.init: torch.distributed is already initialized (backend "
                           f"{dist.get_backend()!r}); call dist.destroy_process_group() first")
    world = MPI.COMM_WORLD
    store = MPIStore(world)
    kwargs = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(BACKEND, store=store, rank=world.Get_rank(), world_size=world.Get_size(), **kwargs)
    return dist.group.WORLD


__all__ = ["BACKEND", "CompressionState", "MPIStore", "ProcessGroupRingtrain", "comm_hook", "init"]
