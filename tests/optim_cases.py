"""Every ringtrain optimizer on a small linear model whose gradients do not depend on its parameters.

The loss is ``(model(x) * y).sum()``: its gradient is ``y^T x`` (and ``y``
summed for the bias) whatever the weights, so two runs at different learning
rates see the same gradients, and their optimizer states (moments, residuals,
velocity) stay equal: what differs between them is only the lr each step used.
This module uses nothing newer than ringtrain 0ecf9af has, so that
tests/scripts/write_old_optimizer_states.py can run it against that version.
"""
import torch
from mpi4py import MPI

import ringtrain
from ringtrain.compression import get

KINDS = ["onebit-adam", "dgc-adam", "zero1", "zero2"]
WARMUP = 2  # the frozen-variance optimizers' AdamW steps; the tests step past it
DGC = "dgc:ratio=0.5,momentum=0.9,masking=0"


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(5, 3)


def build(kind: str, net: torch.nn.Module, comm: MPI.Comm, lr: float = 0.1, groups=None):
    """(reducer, optimizer) of ``kind`` over ``net``; ``groups`` default to all its parameters in one group."""
    params = list(net.parameters()) if groups is None else groups
    adam = dict(lr=lr, betas=(0.9, 0.95), weight_decay=0.0, warmup=WARMUP)
    if kind == "onebit-adam":
        reducer = ringtrain.GradientReducer(net, comm=comm)
        return reducer, ringtrain.OneBitAdam(reducer, params, **adam)
    if kind == "dgc-adam":
        reducer = ringtrain.GradientReducer(net, comm=comm)
        return reducer, ringtrain.reducer.DGCAdam(reducer, params, dgc=get(DGC), **adam)
    reducer = ringtrain.GradientReducer(net, comm=comm, zero=int(kind[-1]), bucket_cap_mb=0.00004)
    return reducer, ringtrain.ZeroOptimizer(reducer, torch.optim.AdamW, params, lr=lr, betas=(0.9, 0.95),
                                            weight_decay=0.0)


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s input and output weights on ``rank``: different on every rank and step."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(4, 5, generator=g), torch.randn(4, 3, generator=g)


def train_step(net, reducer, optimizer, step: int, rank: int) -> None:
    """One step as the trainer takes it: zero_grad, backward, synchronize, step. Collective."""
    optimizer.zero_grad(set_to_none=True)
    x, y = batch(step, rank)
    (net(x) * y).sum().backward()
    reducer.synchronize()
    optimizer.step()


def flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).clone()
