"""The peer every training benchmark is measured against: torch DDP on gloo, started from MPI.

``init_gloo`` builds a gloo process group over the MPI ranks (rank 0 picks the
rendezvous port and broadcasts it). ``train_ddp`` runs the same job as
``ringtrain.train.train``: same model, data, optimizer, schedule, clipping and
validation, with DistributedDataParallel averaging the gradients, optionally
through torch's PowerSGD communication hook.
"""
import contextlib
import datetime
import fcntl
import os
import socket
import struct
import time

import torch
import torch.distributed as dist
from mpi4py import MPI

from ..data import Batches, open_tokens
from ..train.config import TrainConfig
from ..train.model_factory import build_model, make_optimizer
from ..train.schedule import learning_rate
from ..train.trainer import validate


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


def train_ddp(cfg: TrainConfig, comm: MPI.Comm, powersgd_rank: int = 0) -> dict:
    """``cfg``'s training job with DDP on the gloo group from ``init_gloo``; the same result keys as ``train``.

    ``powersgd_rank`` > 0 registers torch's PowerSGD hook at that rank, with
    error feedback and warm start, compressing from the second step (the
    earliest the hook allows).
    """
    from torch.nn.parallel import DistributedDataParallel
    rank, world = comm.Get_rank(), comm.Get_size()
    tokens = open_tokens(cfg.data, comm)
    model, loss_fn = build_model(cfg)
    ddp = DistributedDataParallel(model, bucket_cap_mb=cfg.bucket_cap_mb)
    if powersgd_rank:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=powersgd_rank,
                                            start_powerSGD_iter=2, random_seed=cfg.seed)
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    optimizer = make_optimizer(cfg, model)
    batches = Batches(tokens.tokens, context=cfg.context, batch=cfg.batch_size, seed=cfg.seed, rank=rank, world=world)
    result = {"losses": [], "step_seconds": [], "val_losses": [], "model": model, "world": world, "start_step": 0}
    result["start_val_loss"] = validate(model, loss_fn, batches, cfg, comm)
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, lr=cfg.lr, warmup=cfg.warmup, steps=cfg.steps,
                                        min_lr_ratio=cfg.min_lr_ratio)
        local = 0.0
        for micro in range(cfg.accumulate):  # as the trainer does: all but the last micro-batch without sync
            x, y = batches.train(step * cfg.accumulate + micro)
            with ddp.no_sync() if micro < cfg.accumulate - 1 else contextlib.nullcontext():
                loss = loss_fn(ddp, x, y) / cfg.accumulate
                loss.backward()
            local += loss.item()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total = torch.tensor([local], dtype=torch.float64)
        dist.all_reduce(total)
        result["step_seconds"].append(time.perf_counter() - t0)
        result["losses"].append(float(total) / world)
    result["val_loss"] = validate(model, loss_fn, batches, cfg, comm)
    return result
