"""Per-rank memory: bytes of parameters, gradients and optimizer state, and the peak resident set size.

Gradients count what the gradient averaging holds: the reducer's full buckets
where they exist (ZeRO-2 frees them once reduce-scattered) plus its shards,
or the parameters' own ``.grad`` for a peer such as DDP.
"""
import resource

import torch
from mpi4py import MPI

from ..optim.interface import local_nbytes, state_nbytes


def state_bytes(optimizer) -> int:
    """Bytes of optimizer state this rank holds (ringtrain's optimizers count their own: a shard, residuals)."""
    return state_nbytes(optimizer)


def usage(model: torch.nn.Module, sync, optimizer) -> dict:
    """This rank's figures, in bytes."""
    buckets = getattr(sync, "buckets", None)
    if buckets is not None:
        grads = sum(local_nbytes(b.buffer) for b in buckets)
        if getattr(sync, "shards", None) is not None:
            grads += sync.shards.nbytes()
    else:
        grads = sum(local_nbytes(p.grad) for p in model.parameters())
    return {"parameters": sum(local_nbytes(p) for p in model.parameters()), "gradients": grads,
            "optimizer_state": state_bytes(optimizer),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux reports KiB


def gathered(model, sync, optimizer, comm: MPI.Comm) -> list[dict] | None:
    """Every rank's ``usage``, on rank 0 (None elsewhere). Collective."""
    return comm.gather(usage(model, sync, optimizer), root=0)
