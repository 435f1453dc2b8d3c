"""The ringtrain backend as the default torch.distributed group, with a gloo group beside it as the reference."""
import torch.distributed as dist


def start():
    """(the default ringtrain group, a gloo group of the same ranks). Collective."""
    import ringtrain.distributed  # noqa: F401 (registers the backend and the MPI rendezvous)
    if not dist.is_initialized():
        dist.init_process_group("ringtrain")  # no address, no ranks: they come from MPI
    return dist.group.WORLD, dist.new_group(backend="gloo")  # gloo meets through the MPI-served store


def stop():
    if dist.is_initialized():
        dist.destroy_process_group()
