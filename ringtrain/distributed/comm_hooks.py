"""ringtrain's compression as DDP communication hooks: ``state, hook = comm_hook("powersgd:rank=4")``.

    state, hook = ringtrain.distributed.comm_hook("ef+int8")
    ddp.register_comm_hook(state, hook)

Every spec ``ringtrain.compression.get`` takes works: fp16, bf16, int8 (with
``ef+``), top-k, onebit, PowerSGD, DGC (its momentum correction: give the
momentum to ``dgc:momentum=0.9`` and none to the optimizer, as in
``--compression dgc``) and lz4. 1-bit Adam cannot be a hook: it compresses the
optimizer's momentum after a warm-up of Adam, not the gradients a hook sees;
it is an optimizer (``ringtrain.OneBitAdam``).

The bucket is averaged on the process group's communication thread, so it
overlaps backward like the uncompressed one. Each bucket keeps its own
compressor (error-feedback residual, PowerSGD's Q), matched to the bucket by
its layout (index and parameter sizes). ``state.state_dict()`` /
``load_state_dict`` carry that state through a checkpoint (this rank's: save
it from every rank), and a resume is bit for bit where DDP's buckets keep
their layout. DDP rebuilds its buckets once, after its first step, in the
order gradients became ready (unless ``find_unused_parameters=True``); a
bucket whose layout changed starts fresh, and a resumed DDP's first step runs
on the buckets before that rebuild, so for an exact resume construct DDP with
``find_unused_parameters=True`` (its buckets then never change). On a two-level topology (several nodes, several ranks
on some node) the bucket is summed exactly inside each node and compressed
only across nodes, as the GradientReducer does (reducer/cross_node.py).
"""
import numpy as np
import torch
import torch.distributed as dist

from ..collectives.hierarchical import hierarchical_allreduce
from ..collectives.topology import node_groups
from ..compression import get as compression_get
from ..reducer.cross_node import block_layout, compressed_cross_sum, node_blocks


class CompressionState:
    """Per-bucket compressors for a DDP comm hook, and the group they average over."""

    def __init__(self, spec: str, process_group: dist.ProcessGroup | None = None, node_aware: bool | None = None):
        if compression_get(spec) is None:
            raise ValueError(f"comm_hook: compression {spec!r} compresses nothing; use DDP without a hook")
        if node_aware not in (None, True, False):
            raise ValueError(f"comm_hook: node_aware={node_aware!r} is not allowed — None (auto), True or False")
        self.spec, self.node_aware, self._group = spec, node_aware, process_group
        self.buckets: dict[int, tuple] = {}
        """bucket index -> (layout, compressor, node blocks or None)."""
        self._saved: dict[int, tuple] = {}

    def group(self):
        group = self._group if self._group is not None else dist.group.WORLD
        if not hasattr(group, "thread"):
            raise TypeError(f"comm_hook: the process group's backend is {group.name()!r}; ringtrain's comm hooks "
                            "run on the \"ringtrain\" backend (import ringtrain.distributed, "
                            "init_process_group(\"ringtrain\"))")
        return group

    def compressor(self, group, bucket: dist.GradBucket):
        """This bucket's compressor (and node blocks), made afresh if its layout is new."""
        index, params = bucket.index(), bucket.parameters()
        layout = tuple(p.numel() for p in params)
        known = self.buckets.get(index)
        if known is not None and known[0] == layout:
            return known[1], known[2]
        compressor = compression_get(self.spec)
        bounds, lo = [], 0
        for n in layout:
            bounds.append((lo, lo + n))
            lo += n
        shapes = [tuple(p.shape) for p in params]
        blocks = self._blocks(group, bounds, compressor)
        if blocks is None:
            compressor.set_layout([(a, b, s) for (a, b), s in zip(bounds, shapes)])
        else:
            groups = node_groups(group.comm)
            j = groups.local.Get_rank()
            if compressor.layered and j < groups.width and blocks[j][1] > blocks[j][0]:
                compressor.set_layout(block_layout(bounds, shapes, blocks[j]))
        saved = self._saved.get(index)
        if saved is not None and saved[0] == layout:  # else it waits for a bucket of its layout
            compressor.load_state_dict(self._saved.pop(index)[1])
        self.buckets[index] = (layout, compressor, blocks)
        return compressor, blocks

    def _blocks(self, group, bounds, compressor):
        if self.node_aware is False or group.comm.Get_size() == 1:
            return None
        groups = node_groups(group.comm)  # collective: every rank's first hook call on this group
        if not (groups.two_level if self.node_aware is None else True):
            return None
        return node_blocks(bounds, groups.width, compressor.layered)

    def state_dict(self) -> dict:
        """This rank's compressor state per bucket, with the layout it belongs to."""
        return {"spec": self.spec, "buckets": {i: {"layout": list(layout), "state": c.state_dict()}
                                               for i, (layout, c, _) in self.buckets.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("spec") != self.spec:
            raise ValueError(f"comm_hook: the saved state is of compression {state.get('spec')!r}, "
                             f"this hook's is {self.spec!r}")
        self.buckets = {}
        self._saved = {int(i): (tuple(b["layout"]), b["state"]) for i, b in state["buckets"].items()}


def compressed_average(state: CompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The hook: the bucket's mean over the group, through its compressor, on the group's thread."""
    group = state.group()
    compressor, blocks = state.compressor(group, bucket)
    buffer = bucket.buffer()

    def average():
        grads = buffer.float()  # a view for float32 (DDP's default): the mean is written in place
        if blocks is None:
            mean = compressor.allreduce_mean(grads.numpy(), group.comm)
        else:
            mean = grads.numpy()
            hierarchical_allreduce(group.comm, mean, compressed_cross_sum(compressor), blocks)
            mean /= group.comm.Get_size()
        if mean.ctypes.data != buffer.data_ptr():
            buffer.copy_(torch.from_numpy(np.asarray(mean)))
    return group.thread.submit(average, buffer, f"the {state.spec} comm hook").get_future()


def comm_hook(spec: str, process_group: dist.ProcessGroup | None = None, *, node_aware: bool | None = None):
    """``(state, hook)`` for ``ddp.register_comm_hook``: DDP's gradients averaged through ringtrain's ``spec``.

    ``process_group``: the DDP's group (the default group if None), on the
    ringtrain backend. ``node_aware``: None compresses only across nodes where
    the ranks span several with several ranks on some; False compresses the
    flat average; True forces the two levels.
    """
    return CompressionState(spec, process_group, node_aware), compressed_average
