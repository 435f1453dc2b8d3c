"""Forward only, one batch through the stages in order, over MPI: validation and the end-of-run sample.

No schedule is needed where nothing flows back: each rank runs its stages
as the activations reach them, and sends them on (shape first, then the
float32 bytes). The last stage's output is returned there; elsewhere None.
"""
import numpy as np
import torch
from mpi4py import MPI

from .layout import Layout

_TAG = 71


def _send(comm: MPI.Comm, x: torch.Tensor, dest: int) -> None:
    data = np.ascontiguousarray(x.detach().float().numpy())
    comm.Send(np.array(data.shape, dtype=np.int64), dest=dest, tag=_TAG)
    comm.Send(data, dest=dest, tag=_TAG + 1)


def _recv(comm: MPI.Comm, source: int, dims: int = 3) -> torch.Tensor:
    shape = np.empty(dims, dtype=np.int64)
    comm.Recv(shape, source=source, tag=_TAG)
    data = np.empty(tuple(shape), dtype=np.float32)
    comm.Recv(data, source=source, tag=_TAG + 1)
    return torch.from_numpy(data)


@torch.no_grad()
def forward(stages: dict, layout: Layout, pipeline: MPI.Comm, x: torch.Tensor | None) -> torch.Tensor | None:
    """The whole model's output for input ``x`` (given on position 0), on the last stage's rank; else None.

    ``stages`` maps this rank's stage indices to their modules; ``pipeline``
    is this replica's communicator, ranked by position. Collective over it.
    """
    me = layout.position
    for s in range(layout.stages):
        owner = s % layout.ranks
        if owner != me:
            continue
        before = (s - 1) % layout.ranks
        if s > 0 and before != me:
            x = _recv(pipeline, before)
        x = stages[s](x)
        after = (s + 1) % layout.ranks
        if s < layout.stages - 1 and after != me:
            _send(pipeline, x, after)
    return x if (layout.stages - 1) % layout.ranks == me else None
