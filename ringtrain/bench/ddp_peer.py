"""The peer every training benchmark is measured against: torch DDP on gloo, started from MPI.

``init_gloo`` builds a gloo process group over the MPI ranks (rank 0 picks the
rendezvous port and broadcasts it). ``train_ddp`` runs ``ringtrain.train.train``
itself with DDPSync plugged in as the gradient averaging: the same loop, data,
optimizer, schedule, clipping, accumulation and validation, with
DistributedDataParallel averaging the gradients, optionally through torch's
PowerSGD communication hook.

The same DDP runs on the ringtrain backend too, so that the two backends meet
in one job: ``init_groups(comm, ringtrain=True)`` makes ringtrain's group the
default (no MASTER_ADDR) and a gloo group of the same ranks beside it, and
``train_ddp(..., group=groups["ringtrain"], comm_hook="ef+int8")`` averages
through one of ringtrain's compressors as a DDP comm hook::

    groups = init_groups(MPI.COMM_WORLD, ringtrain=True)
    theirs = train_ddp(cfg, MPI.COMM_WORLD, group=groups["gloo"], powersgd_rank=4)
    ours = train_ddp(cfg, MPI.COMM_WORLD, group=groups["ringtrain"], comm_hook="powersgd:rank=4")
"""
import datetime
import fcntl
import os
import socket
import struct

import torch.distributed as dist
from mpi4py import MPI

from ..train.config import TrainConfig
from ..train.trainer import train


def _interface_address(name: str) -> str:
    """The IPv4 address of network interface ``name`` (Linux SIOCGIFADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
        except OSError as e:
            raise ValueError(f"GLOO_SOCKET_IFNAME={name}: no IPv4 address on that interface ({e})") from None
    return socket.inet_ntoa(packed[20:24])


def rendezvous_address(comm: MPI.Comm) -> str:
    """Rank 0's address for gloo: MASTER_ADDR, else GLOO_SOCKET_IFNAME's address, else loopback on one host."""
    address = None
    if comm.Get_rank() == 0:
        if os.environ.get("MASTER_ADDR"):
            address = os.environ["MASTER_ADDR"]
        elif os.environ.get("GLOO_SOCKET_IFNAME"):
            address = _interface_address(os.environ["GLOO_SOCKET_IFNAME"].split(",")[0])
    hosts = comm.allgather(socket.gethostname())
    address = comm.bcast(address, root=0)
    if address is None:
        if len(set(hosts)) > 1:
            raise ValueError("the DDP peer spans several hosts: set MASTER_ADDR or GLOO_SOCKET_IFNAME "
                             "so that gloo knows where rank 0 listens")
        address = "127.0.0.1"
    return address


def init_gloo(comm: MPI.Comm) -> None:
    """A gloo default process group over ``comm``'s ranks. Collective."""
    address = rendezvous_address(comm)
    port = None
    if comm.Get_rank() == 0:
        with socket.socket() as s:
            s.bind((address, 0))
            port = s.getsockname()[1]
    port = comm.bcast(port, root=0)
    dist.init_process_group("gloo", init_method=f"tcp://{address}:{port}", rank=comm.Get_rank(),
                            world_size=comm.Get_size(), timeout=datetime.timedelta(seconds=120))


def init_groups(comm: MPI.Comm, ringtrain: bool) -> dict[str, dist.ProcessGroup]:
    """torch.distributed over ``comm``'s ranks: ``{"gloo": group}``, plus ``"ringtrain"`` if asked. Collective.

    Without ringtrain, gloo's group is ``init_gloo``'s default group, as the
    peer always was. With it, ringtrain's group is the default (it needs
    COMM_WORLD's ranks) and gloo's is ``dist.new_group(backend="gloo")``,
    meeting through ringtrain's MPI-served store: the same gloo process group,
    only found another way.
    """
    if not ringtrain:
        init_gloo(comm)
        return {"gloo": dist.group.WORLD}
    if comm.Get_size() != MPI.COMM_WORLD.Get_size():
        raise ValueError(f"init_groups: the ringtrain backend spans COMM_WORLD ({MPI.COMM_WORLD.Get_size()} ranks), "
                         f"not a communicator of {comm.Get_size()}")
    from .. import distributed  # registers the backend
    default = distributed.init(timeout=datetime.timedelta(seconds=120))
    return {"ringtrain": default, "gloo": dist.new_group(backend="gloo")}


class DDPSync:
    """torch DDP as the training loop's gradient averaging (train/sync.py): forward runs on DDP's wrapper,
    whose backward hooks average the gradients, so there is nothing left to wait for in ``synchronize``."""

    last_wire_bytes = last_comm_seconds = None  # DDP reports neither

    def __init__(self, model, cfg: TrainConfig, powersgd_rank: int = 0, *, group: dist.ProcessGroup | None = None,
                 comm_hook: str | None = None):
        from torch.nn.parallel import DistributedDataParallel
        _check_hooks(group, powersgd_rank, comm_hook)
        buffers = {}
        if cfg.broadcast_buffers == "off":  # torch 2.13 renamed the switch; older torch has only the old name
            import inspect
            new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            buffers = {"forward_sync_buffers" if new_name else "broadcast_buffers": False}
        self.model = DistributedDataParallel(model, bucket_cap_mb=cfg.bucket_cap_mb, process_group=group, **buffers)
        if powersgd_rank:
            from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
            # The hook's own allreduces go to its state's group (None would be the default group,
            # which is ringtrain's when both backends are up): the DDP's group.
            state = powerSGD_hook.PowerSGDState(process_group=group, matrix_approximation_rank=powersgd_rank,
                                                start_powerSGD_iter=2, random_seed=cfg.seed)
            self.model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        elif comm_hook:
            from ..distributed import comm_hook as ringtrain_hook
            self.model.register_comm_hook(*ringtrain_hook(comm_hook, group))

    def no_sync(self):
        return self.model.no_sync()

    def synchronize(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _check_hooks(group, powersgd_rank: int, comm_hook: str | None) -> None:
    """Before DDP is built: one hook at most, and ringtrain's only on a ringtrain group."""
    if powersgd_rank < 0:
        raise ValueError(f"powersgd_rank={powersgd_rank}: allowed are 0 (no hook) or a rank >= 1")
    if powersgd_rank and comm_hook:
        raise ValueError(f"powersgd_rank={powersgd_rank} and comm_hook={comm_hook!r}: DDP takes one comm hook; "
                         "give one of them")
    if comm_hook and dist.get_backend(group) != "ringtrain":
        raise ValueError(f"comm_hook={comm_hook!r} runs on the ringtrain backend, and this DDP's group is "
                         f"{dist.get_backend(group)!r}: pass group=init_groups(comm, ringtrain=True)['ringtrain']")


def train_ddp(cfg: TrainConfig, comm: MPI.Comm, powersgd_rank: int = 0, *, group: dist.ProcessGroup | None = None,
              comm_hook: str | None = None) -> dict:
    """``cfg``'s training job with DDP on ``group`` (the default group: gloo's from ``init_gloo``), through
    ringtrain's own loop.

    ``powersgd_rank`` > 0 registers torch's PowerSGD hook at that rank, with
    error feedback and warm start, compressing from the second step (the
    earliest the hook allows). ``comm_hook`` registers ringtrain's compressor
    of that spec instead (``ringtrain.distributed.comm_hook``; ``group`` must
    be a ringtrain group).
    """
    if "auto" in (cfg.compression, cfg.bucket_cap_mb) or cfg.zero:
        raise ValueError("the DDP peer takes a fixed --compression none and --bucket-cap-mb, and no --zero")
    _check_hooks(group, powersgd_rank, comm_hook)
    return train(cfg, comm, make_sync=lambda task, cfg, comm, tuned, tracer: DDPSync(
        task.model, cfg, powersgd_rank, group=group, comm_hook=comm_hook))
