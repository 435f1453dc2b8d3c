"""GradientReducer: average gradients across ranks while backward is still running.

    reducer = ringtrain.GradientReducer(model)      # broadcasts rank 0's weights
    loss.backward()                                 # buckets start averaging as they fill
    reducer.synchronize()                           # waits; p.grad now holds the mean
    optimizer.step()

A post-accumulate-grad hook on every parameter marks its gradient in; when a
bucket's last gradient is in, the communication thread averages it with
ringtrain.allreduce (op="mean") while autograd goes on with earlier layers.

Zero-copy buckets: each ``p.grad`` is a view of its slice of a bucket, so
autograd accumulates straight into the bucket and nothing is copied. The views
stay through ``optimizer.zero_grad()``: set to None, a gradient is re-attached
as its zeroed view by a forward pre-hook before the next backward (a memset of
memory already mapped, where a fresh gradient would be allocated and page-faulted
in every step, then copied). A gradient that is not the view (the first step,
or one the caller set) is copied in once and replaced by the view.
``synchronize`` leaves each ``p.grad`` as its averaged view, or None where no
rank had a gradient.

On a two-level topology (several nodes, several ranks on some node) a
compressed bucket is compressed only where it crosses nodes (cross_node.py);
an uncompressed one goes through ``allreduce``'s "auto", which picks the
node-aware ring there from 1 MiB.

MPI threading: only the communication thread calls MPI between the first
backward hook and ``synchronize``, and only the main thread outside that
window, so MPI_THREAD_SERIALIZED is enough; the constructor checks it.
"""
import contextlib
import sys

import torch
from mpi4py import MPI

from .. import environment
from ..checks import number
from ..collectives import allreduce, broadcast
from ..collectives.algorithms import FLAT_AUTO, NODE_AWARE_AUTO
from ..collectives.thresholds import choose_algorithm
from ..collectives.comm import handshake, private
from ..collectives.hierarchical import hierarchical_allreduce
from ..collectives.topology import node_groups
from ..compression import get as compression_get
from ..constants import BUCKET_CAP_MB
from ..trace import NO_TRACE
from .buckets import assign_buckets, layout_fingerprint
from .buffer_sync import BufferSync
from .comm_thread import CommThread
from .cross_node import block_layout, compressed_cross_sum, node_blocks
from .zero import GradientShards, zero_compatible


class GradientReducer:
    """Data-parallel gradient averaging for any torch model on CPU.

    ``bucket_cap_mb`` bounds each flat gradient bucket (25 MB by default, as in
    DDP). ``compression`` is a spec for ``ringtrain.compression.get`` (for
    example ``"ef+topk:ratio=0.01"``); each bucket gets its own compressor, whose
    state (error-feedback residuals, PowerSGD's Q) ``state_dict`` returns.
    ``node_aware``: None (the default) goes node-aware where the ranks span
    several nodes with several ranks on some node; True forces it (on one node
    nothing crosses a link, so nothing is compressed); False keeps the flat ring
    and compresses every hop. ``poll_sleep_us``: how long the communication
    thread sleeps between tests of its MPI requests, so backward keeps the core
    (0 spins inside MPI; default RINGTRAIN_POLL_SLEEP_US or 200). ``trace``: a
    ``ringtrain.trace.Tracer``; each bucket's ready instant and averaging span
    (and a gathered codec's compress and decompress) go into it.
    ``first_bucket_mb`` caps the first bucket (the last layers, ready first)
    lower, so that averaging starts early. ``broadcast_buffers`` (default
    True, as DDP): rank 0's buffers (BatchNorm statistics) overwrite every
    rank's at the end of each ``synchronize`` (buffer_sync.py). ``zero``: 1
    or 2 reduce-scatters each bucket instead, keeping this rank's averaged
    chunk for a ZeroOptimizer (zero.py; 2 also frees the full buckets), and
    ``synchronize`` leaves every ``p.grad`` None.
    Collective: every rank must construct it, with the same model architecture.

    >>> model = torch.nn.Linear(4, 2)
    >>> reducer = GradientReducer(model, comm=MPI.COMM_SELF)
    >>> model(torch.ones(3, 4)).sum().backward(); reducer.synchronize()
    >>> reducer.close()
    """

    def __init__(self, model: torch.nn.Module, *, bucket_cap_mb: float = BUCKET_CAP_MB, compression=None,
                 comm: MPI.Comm | None = None, broadcast_from: int | None = 0, node_aware: bool | None = None,
                 poll_sleep_us: float | None = None, trace=NO_TRACE, first_bucket_mb: float | None = None,
                 broadcast_buffers: bool = True, zero: int = 0):
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        level = MPI.Query_thread()
        if level < MPI.THREAD_SERIALIZED:
            raise RuntimeError("GradientReducer makes MPI calls from a communication thread and needs "
                               f"MPI_THREAD_SERIALIZED or higher; MPI was initialised with level {level}. "
                               "mpi4py asks for MPI_THREAD_MULTIPLE unless mpi4py.rc.thread_level says otherwise")
        self.comm = private(MPI.COMM_WORLD if comm is None else comm)
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.device.type != "cpu":
                raise ValueError(f"GradientReducer works on CPU tensors; a parameter is on {p.device}")
        if first_bucket_mb is not None and not first_bucket_mb > 0:
            raise ValueError(f"first_bucket_mb must be > 0 (or None: as bucket_cap_mb), got {first_bucket_mb}")
        self.buckets = assign_buckets(params, int(bucket_cap_mb * 1e6),
                                      None if first_bucket_mb is None else int(first_bucket_mb * 1e6))
        if zero not in (0, 1, 2) or isinstance(zero, bool):
            raise ValueError(f"zero={zero!r} is not allowed — 0 (allreduce), 1 (shard the optimizer state) or 2 "
                             "(and the gradients)")
        self.zero = zero
        self.compressors = [compression_get(compression) for _ in self.buckets]
        if zero and not zero_compatible(self.compressors[0]):
            raise ValueError(f"compression {compression!r} with ZeRO: not supported yet — ZeRO reduce-scatters, "
                             "so only codecs that sum on the ring work: fp16, bf16, int8 (no ef, no lz4)")
        # The compression and bucket cap it was built with (an optimizer such as OneBitAdam checks them).
        self.compression_spec, self.bucket_cap_mb = compression or "none", bucket_cap_mb
        for bucket, compressor in zip(self.buckets, self.compressors):
            if compressor is not None:
                compressor.set_layout([(lo, hi, tuple(p.shape)) for p, (lo, hi) in zip(bucket.params, bucket.bounds)])
        self._where = {id(p): (b, i) for b in self.buckets for i, p in enumerate(b.params)}
        self.trace = trace
        if trace.enabled:
            for compressor in self.compressors:
                if compressor is not None:
                    _trace_codec(compressor, trace)
        total, digest, describe = layout_fingerprint(self.buckets)
        # Every rank must agree on the layout before any per-parameter collective,
        # or ranks with different models would wait on different broadcasts.
        handshake(self.comm, "GradientReducer (model layout)", total, digest, lambda: describe)
        self._set_node_aware(node_aware)
        if broadcast_from is not None:
            with torch.no_grad():
                for t in model.parameters():
                    broadcast(t.data, root=broadcast_from, comm=self.comm)
            BufferSync(model, self.comm, root=broadcast_from)()  # buffers of any dtype, packed
        self._sync = True
        # False: synchronize leaves each rank's own gradients (OneBitAdam after its warm-up).
        self.averaging = True
        self.last_comm_seconds = 0.0
        self.last_wire_bytes = 0  # bytes this rank sent averaging the last step's gradients (traffic.py)
        # On one rank the average is the gradient itself: no hooks, no copies,
        # no thread, so a single-rank run costs what a plain torch loop costs.
        # (Sharded, even one rank goes through the buckets: the shards are where the optimizer looks.)
        self._alone = self.comm.Get_size() == 1 and not zero
        self.shards = GradientShards(self.buckets, self.comm, zero, self.compressors) if zero else None
        self.poll_sleep_us = _poll_sleep_us(poll_sleep_us)
        self._thread = None if self._alone else CommThread(len(self.buckets), self._reduce_bucket,
                                                           self.poll_sleep_us * 1e-6)
        self._params = params
        self._touched, self._zeroed = set(), set()  # since the last synchronize: got a gradient; attached as zeros
        self._hooks = [] if self._alone else [p.register_post_accumulate_grad_hook(self._grad_ready)
                                               for p in params]
        if broadcast_buffers not in (True, False):
            raise ValueError(f"broadcast_buffers={broadcast_buffers!r} is not allowed — True or False")
        self._sync_buffers = BufferSync(model, self.comm) if broadcast_buffers and not self._alone else None
        if self._sync_buffers is not None and not self._sync_buffers.groups:
            self._sync_buffers = None
        if not self._alone:
            self._hooks.append(model.register_forward_pre_hook(self._before_forward))

    def _set_node_aware(self, node_aware: bool | None) -> None:
        """Choose the algorithm of uncompressed buckets, and cut compressed ones into per-node blocks."""
        if node_aware not in (None, True, False):
            raise ValueError(f"node_aware={node_aware!r} is not allowed — None (auto), True or False")
        # What uncompressed buckets run: allreduce's own (node-aware) choice, unless told otherwise.
        self.node_aware, self._blocks, self._algorithm = False, None, NODE_AWARE_AUTO
        if self.comm.Get_size() == 1:
            return
        if node_aware is False:  # the choice by size alone, whatever the topology
            self._algorithm = FLAT_AUTO
            return
        groups = node_groups(self.comm)  # collective; every rank is here, after the handshake
        self.node_aware = groups.two_level if node_aware is None else True
        if node_aware:
            self._algorithm = "hierarchical"
        if not self.node_aware or all(c is None for c in self.compressors):
            return
        j = groups.local.Get_rank()
        self._blocks = []
        for bucket, compressor in zip(self.buckets, self.compressors):
            layered = compressor is not None and compressor.layered
            blocks = node_blocks(bucket.bounds, groups.width, layered)
            self._blocks.append(blocks)
            if layered and j < groups.width and blocks[j][1] > blocks[j][0]:
                compressor.set_layout(block_layout(bucket.bounds, [tuple(p.shape) for p in bucket.params],
                                                   blocks[j]))

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients locally inside this block; the next backward outside it averages them."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    def _before_forward(self, module, inputs) -> None:
        """Before a forward that will backpropagate: each gradient set to None becomes its zeroed bucket view."""
        if not torch.is_grad_enabled() or self.zero == 2:  # ZeRO-2 keeps no full buffer between steps
            return
        for p in self._params:
            if p.grad is None:
                bucket, i = self._where[id(p)]
                p.grad = bucket.view(i).zero_()
                self._zeroed.add(id(p))

    def _grad_ready(self, p: torch.Tensor) -> None:
        self._touched.add(id(p))
        if not self._sync or not self.averaging:
            return
        bucket, i = self._where[id(p)]
        if bucket.submitted:
            raise RuntimeError("a parameter received a gradient after its bucket was sent for averaging; "
                               "call reducer.synchronize() after each backward, or use reducer.no_sync()")
        if bucket.waiting is None:
            bucket.waiting = {id(q) for q in bucket.params}
        self._copy_in(bucket, i)
        bucket.waiting.discard(id(p))
        if not bucket.waiting:
            self._submit(bucket)

    def _submit(self, bucket) -> None:
        bucket.submitted, bucket.waiting = True, None
        if self.trace.enabled:
            self.trace.instant(f"bucket {bucket.index} ready", "bucket",
                               bytes=bucket.buffer.numel() * bucket.buffer.element_size())
        self._thread.mark_ready(bucket.index)

    def _copy_in(self, bucket, i: int) -> None:
        """Put parameter i's gradient into its bucket slice (a no-op when p.grad is that slice) and flag it."""
        bucket.allocate()
        p, view = bucket.params[i], bucket.view(i)
        # A view attached as zeros that no backward touched is no gradient: it must stay None, as in torch.
        has = id(p) in self._touched or (p.grad is not None and id(p) not in self._zeroed)
        bucket.flags[i] = has
        if not has or p.grad is None:
            view.zero_()
        elif p.grad.data_ptr() != view.data_ptr():
            view.copy_(p.grad)
            # From now on autograd accumulates into the bucket; ZeRO-2 frees the gradient instead.
            p.grad = None if self.zero == 2 else view

    def _reduce_bucket(self, index: int) -> None:
        bucket, compressor = self.buckets[index], self.compressors[index]
        nbytes = bucket.buffer.numel() * bucket.buffer.element_size()
        algorithm = self._algorithm
        if algorithm == FLAT_AUTO:  # allreduce has no flat auto: the reducer asks the table itself
            algorithm = choose_algorithm(nbytes, self.comm.Get_size())
        if not self.trace.enabled:
            self._average(bucket, compressor, algorithm)
            return
        how = algorithm if compressor is None else "across nodes" if self._blocks is not None else "every hop"
        with self.trace.span(f"allreduce bucket {index}", "communication", bytes=nbytes, algorithm=how,
                             compressor=self.compression_spec):
            self._average(bucket, compressor, algorithm)

    def _average(self, bucket, compressor, algorithm: str) -> None:
        # check=False: the layout was verified once at construction.
        if self.shards is not None:
            self.shards.reduce_scatter(bucket)
            return
        if compressor is None:
            allreduce(bucket.buffer, op="mean", algorithm=algorithm, comm=self.comm, check=False)
            return
        grads = bucket.buffer[:bucket.bounds[-1][1]]
        if self._blocks is None:
            mean = compressor.allreduce_mean(grads.float().numpy(), self.comm)
        else:
            mean = grads.float().numpy()  # a view for float32: summed in place
            hierarchical_allreduce(self.comm, mean, compressed_cross_sum(compressor), self._blocks[bucket.index])
            mean /= self.comm.Get_size()
        if mean.ctypes.data != grads.data_ptr():
            grads.copy_(torch.from_numpy(mean))
        # The used-flags stay exact: a compressor must not decide whether a gradient exists.
        allreduce(bucket.flags, op="mean", comm=self.comm, check=False)

    def state_dict(self) -> dict:
        """This rank's compression state, one entry per bucket (None where uncompressed).

        Node-aware, a compressor's state belongs to this rank's block on its
        node, so the layout (nodes, ranks per node that share the work, local
        rank) is recorded with it.
        """
        return {"compression": [None if c is None else c.state_dict() for c in self.compressors],
                "blocks": self._block_key()}

    def _block_key(self) -> list[int] | None:
        if self._blocks is None:
            return None
        groups = node_groups(self.comm)  # cached: not collective here
        return [groups.nodes, groups.width, groups.local.Get_rank()]

    def load_state_dict(self, state: dict) -> None:
        saved = state["compression"]
        if state.get("blocks") != self._block_key():
            # Residuals of another cut of the bucket cannot be mapped onto this one.
            if self.comm.Get_rank() == 0:
                print(f"ringtrain: warning: the compression state was saved with node layout {state.get('blocks')} "
                      f"(nodes, ranks per node, local rank; None: flat) and this run has {self._block_key()}: "
                      "error-feedback residuals start from zero", file=sys.stderr, flush=True)
            return
        if len(saved) != len(self.compressors):
            raise ValueError(f"the saved reducer state has {len(saved)} buckets, this reducer {len(self.compressors)}")
        for compressor, s in zip(self.compressors, saved):
            if (compressor is None) != (s is None):
                raise ValueError("the saved reducer state was written with a different compression setting")
            if compressor is not None:
                compressor.load_state_dict(s)

    def synchronize(self) -> None:
        """Wait until every bucket is averaged and point each ``p.grad`` at its averaged slice.

        A parameter that got no gradient on some ranks counts as zeros there, so
        an unused parameter never hangs a rank; one that got none on any rank
        keeps ``grad = None``, exactly as in a single-process run.
        """
        if self._alone:
            return
        if not self.averaging:
            self._keep_local()
            return
        for bucket in self.buckets:
            if bucket.submitted:
                continue
            for i, q in enumerate(bucket.params):
                if bucket.waiting is None or id(q) in bucket.waiting:
                    self._copy_in(bucket, i)
            self._submit(bucket)
        self._thread.wait()
        self.last_comm_seconds = self._thread.busy_seconds
        self.last_wire_bytes = self._thread.sent[0]
        if self._sync_buffers is not None:
            # Here, not before each forward as DDP does: every rank calls synchronize, so an evaluation
            # forward on some ranks alone can never hang, and after every step the buffers are equal
            # everywhere, for validation and checkpoints alike.
            self._sync_buffers()
        self._touched.clear()
        self._zeroed.clear()
        if self.shards is not None:
            # Only this rank's chunk of each bucket is averaged (in self.shards): no full gradient is valid.
            for bucket in self.buckets:
                bucket.submitted = False
            for p in self._params:
                p.grad = None
            return
        for bucket in self.buckets:
            bucket.submitted = False
            used = bucket.flags.tolist()
            for i, p in enumerate(bucket.params):
                p.grad = bucket.view(i) if used[i] else None

    def _keep_local(self) -> None:
        """``synchronize`` while not averaging: each rank keeps its own gradients (an optimizer such as
        OneBitAdam averages something else); buffers are still made equal."""
        self.last_comm_seconds, self.last_wire_bytes = 0.0, 0
        if self._sync_buffers is not None:
            self._sync_buffers()
        for p in self._params:
            if id(p) in self._zeroed and id(p) not in self._touched:  # attached as zeros, never filled
                p.grad = None
        self._touched.clear()
        self._zeroed.clear()

    def close(self) -> None:
        """Remove the hooks and stop the communication thread."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self._thread is not None:
            self._thread.close()
            self._thread = None


def _trace_codec(compressor, trace) -> None:
    """Record a compressor's compress and decompress calls as spans (ring codecs encode inside the ring)."""
    for name in ("compress", "decompress"):
        method = getattr(compressor, name)

        def traced(*args, method=method, name=name):
            with trace.span(name, "codec", codec=compressor.name):
                return method(*args)
        setattr(compressor, name, traced)


_POLL_SLEEP = number(0, 1e6, below=True)


def _poll_sleep_us(value: float | None) -> float:
    """The sleep between polls in microseconds: ``value``, else RINGTRAIN_POLL_SLEEP_US, else the default."""
    allowed = f"microseconds between polls, {_POLL_SLEEP.allowed} (0 spins)"
    if value is not None:
        if not _POLL_SLEEP.allows(value):
            raise ValueError(f"poll_sleep_us is not allowed — {allowed}; got {value!r}")
        return float(value)
    # The same rule, and constants.POLL_SLEEP_US when unset (environment.py); a UsageError (a ValueError) if bad.
    return environment.value("RINGTRAIN_POLL_SLEEP_US")
