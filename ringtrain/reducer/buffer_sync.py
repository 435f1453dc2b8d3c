"""Buffers kept equal on every rank: rank 0's are broadcast at the end of each gradient synchronisation.

BatchNorm's running statistics are updated by each rank's own batches, so
without this they drift apart, and evaluation or a checkpoint taken on another
rank disagrees with rank 0's. DDP broadcasts before each forward instead, so
its ranks differ again after the last step's forward; the reducer broadcasts
inside ``synchronize``, which every rank calls, so the buffers are equal after
every step. The statistics follow rank 0's batches either way. The buffers are packed by dtype into one flat
tensor each (floating statistics, integer counters such as num_batches_tracked),
so a model with a hundred buffers costs one or two MPI_Bcast calls, not a hundred.
Every rank must run the same number of training forwards, as with DDP.
"""
import torch


class BufferSync:
    """Calling it copies ``root``'s buffers to every rank of ``comm``. Collective."""

    def __init__(self, model: torch.nn.Module, comm, root: int = 0):
        self.comm, self.root = comm, root
        groups = {}
        for b in model.buffers():
            groups.setdefault(b.dtype, []).append(b)
        self.groups = list(groups.values())
        self.flat = [torch.empty(sum(b.numel() for b in bs), dtype=bs[0].dtype) for bs in self.groups]
        # One view of the flat tensor per buffer, made once: packing and unpacking are one foreach copy each.
        self.views = []
        for buffers, flat in zip(self.groups, self.flat):
            at, views = 0, []
            for b in buffers:
                views.append(flat[at:at + b.numel()].view_as(b))
                at += b.numel()
            self.views.append(views)

    def __call__(self) -> None:
        """Overwrite every rank's buffers with the root's. Collective."""
        with torch.no_grad():
            for buffers, flat, views in zip(self.groups, self.flat, self.views):
                torch._foreach_copy_(views, buffers)
                # As raw bytes: buffers come in any dtype (bool masks, uint8), which only need copying.
                self.comm.Bcast(flat.view(torch.uint8).numpy(), root=self.root)
                torch._foreach_copy_(buffers, views)
