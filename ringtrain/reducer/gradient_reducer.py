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

Given a list of parameters instead of a module (an optimizer's, as
ringtrain.horovod's DistributedOptimizer has), there is no forward to hook
and no buffers: whoever owns the parameters calls ``attach_gradient(p)``
before a gradient is accumulated (a tensor hook on ``p`` does), or each
step's gradients are copied into the buckets once.

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

from ..checks import Switch
from ..collectives import allreduce, broadcast
from ..collectives.algorithms import FLAT_AUTO, NODE_AWARE_AUTO
from ..collectives.thresholds import choose_algorithm
from ..collectives.comm import handshake, private
from ..collectives.hierarchical import hierarchical_allreduce
from ..collectives.topology import node_groups
from ..compression import Compressor, Path, get as compression_get, spec_of
from ..compression.compatibility import zero_conflict
from ..constants import BUCKET_CAP_MB
from ..trace import NO_TRACE
from .arguments import check_arguments, poll_sleep_us_of
from .buckets import assign_buckets, layout_fingerprint
from .buffer_sync import BufferSync
from .comm_thread import CommThread
from .cross_node import block_layout, compressed_cross_sum, node_blocks
from ..optim.zero.shards import GradientShards
from .traced import TracedCompressor


class GradientReducer:
    """Data-parallel gradient averaging for any torch model on CPU.

    ``bucket_cap_mb`` bounds each flat gradient bucket (25 MB by default, as in
    DDP). ``compression`` is a spec for ``ringtrain.compression.get`` (for
    example ``"ef+topk:ratio=0.01"``) or a Compressor object (``ErrorFeedback(TopK(0.01))``);
    each bucket gets its own compressor (an object's ``fresh()`` copy: the object
    itself is never run), whose state (error-feedback residuals, PowerSGD's Q)
    ``state_dict`` returns.
    ``node_aware``: "auto" (the default) goes node-aware where the ranks span
    several nodes with several ranks on some node; "on" forces it (on one node
    nothing crosses a link, so nothing is compressed); "off" keeps the flat ring
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
    chunk for a ZeroOptimizer (optim/zero/shards.py; 2 also frees the full buckets), and
    ``synchronize`` leaves every ``p.grad`` None.
    ``model`` may also be a list of parameters (module docstring): then only
    they are broadcast, there are no buffers, and ``attach_gradient`` stands
    in for the forward pre-hook. ``backward_passes`` (an attribute, default 1):
    a parameter's gradient is averaged at its n-th backward since the last
    ``synchronize``; the earlier ones accumulate locally (Horovod's
    ``backward_passes_per_step``), and ``synchronize`` averages what there is.
    Collective: every rank must construct it, with the same model architecture.
    Every argument is checked first: a bad one raises ValueError before any
    collective, thread or hook.

    >>> model = torch.nn.Linear(4, 2)
    >>> reducer = GradientReducer(model, comm=MPI.COMM_SELF)
    >>> model(torch.ones(3, 4)).sum().backward(); reducer.synchronize()
    >>> reducer.close()
    """

    def __init__(self, model: "torch.nn.Module | list[torch.Tensor]", *, bucket_cap_mb: float = BUCKET_CAP_MB,
                 compression: "str | Compressor | None" = None, comm: MPI.Comm | None = None,
                 broadcast_from: int | None = 0, node_aware: Switch = "auto", poll_sleep_us: float | None = None,
                 trace=NO_TRACE, first_bucket_mb: float | None = None, broadcast_buffers: bool = True,
                 zero: int = 0):
        # Every argument is checked before the first collective, thread or hook, so a bad one leaves nothing
        # behind: it raises on every rank that was given it, with nothing pending between the ranks.
        check_arguments(model, bucket_cap_mb=bucket_cap_mb, comm=comm, broadcast_from=broadcast_from,
                        node_aware=node_aware, first_bucket_mb=first_bucket_mb, broadcast_buffers=broadcast_buffers,
                        zero=zero)
        self.poll_sleep_us = poll_sleep_us_of(poll_sleep_us)
        self.model, self.zero, self.trace, self.bucket_cap_mb = model, zero, trace, bucket_cap_mb
        # A module, or the parameters themselves (no forward to hook, no buffers).
        self._module = model if isinstance(model, torch.nn.Module) else None
        self._params = [p for p in (model.parameters() if self._module is not None else model) if p.requires_grad]
        self._lay_out(bucket_cap_mb, first_bucket_mb)
        self._make_compressors(compression)
        # Collective from here on.
        self.comm = private(MPI.COMM_WORLD if comm is None else comm)
        self._agree_on_layout()
        self._set_node_aware(node_aware)
        if broadcast_from is not None:
            self._broadcast_state(broadcast_from)
        self._start(broadcast_buffers)

    def _lay_out(self, bucket_cap_mb: float, first_bucket_mb: float | None) -> None:
        """The buckets (buckets.py) and where each parameter lives in them. Local."""
        self.buckets = assign_buckets(self._params, int(bucket_cap_mb * 1e6),
                                      None if first_bucket_mb is None else int(first_bucket_mb * 1e6))
        self._where = {id(p): (b, i) for b in self.buckets for i, p in enumerate(b.params)}

    def _make_compressors(self, compression) -> None:
        """One compressor per bucket (None: uncompressed): from the spec, or ``fresh()`` copies of an object."""
        first = compression_get(compression)  # ValueError for a bad spec: before any collective
        self.compressors = [first] + [compression_get(compression) for _ in self.buckets[1:]]
        reason = zero_conflict(self.zero, first)
        # The compression it was built with, as text (an optimizer such as OneBitAdam checks it).
        self.compression_spec = spec_of(compression)
        if reason:
            raise ValueError(f"compression {self.compression_spec!r} with ZeRO: not supported yet — {reason}")
        for bucket, compressor in zip(self.buckets, self.compressors):
            if compressor is not None:
                compressor.set_layout([(lo, hi, tuple(p.shape)) for p, (lo, hi) in zip(bucket.params, bucket.bounds)])
        # Tracing wraps the gathered ones (their compress and decompress become spans); the others encode inside
        # the ring or the allreduce, where the bucket's span covers them.
        self._averagers = [TracedCompressor(c, self.trace) if self.trace.enabled and c is not None
                           and c.path is Path.GATHERED else c for c in self.compressors]

    def _agree_on_layout(self) -> None:
        """Every rank must agree on the layout before any per-parameter collective, or ranks with different
        models would wait on different broadcasts. Collective."""
        total, digest, describe = layout_fingerprint(self.buckets)
        handshake(self.comm, "GradientReducer (model layout)", total, digest, lambda: describe)

    def _broadcast_state(self, root: int) -> None:
        """Rank ``root``'s weights and buffers (any dtype, packed) to every rank. Collective."""
        with torch.no_grad():
            for t in self._module.parameters() if self._module is not None else self._params:
                broadcast(t.data, root=root, comm=self.comm)
        if self._module is not None:
            BufferSync(self._module, self.comm, root=root)()

    def _start(self, broadcast_buffers: bool) -> None:
        """The per-step state, then the communication thread and the hooks: the last step, nothing can fail after."""
        self._sync = True
        # False: synchronize leaves each rank's own gradients (OneBitAdam after its warm-up).
        self.averaging = True
        self.last_comm_seconds = 0.0
        self.last_wire_bytes = 0  # bytes this rank sent averaging the last step's gradients (traffic.py)
        # On one rank the average is the gradient itself: no hooks, no copies,
        # no thread, so a single-rank run costs what a plain torch loop costs.
        # (Sharded, even one rank goes through the buckets: the shards are where the optimizer looks.)
        self._alone = self.comm.Get_size() == 1 and not self.zero
        self.shards = GradientShards(self.buckets, self.comm, self.zero, self.compressors) if self.zero else None
        self.backward_passes = 1  # a gradient is averaged at its n-th backward since synchronize (class docstring)
        # Since the last synchronize: id(p) -> backward passes that gave p a gradient; ids attached as zeros.
        self._passes, self._zeroed = {}, set()
        self._sync_buffers = (BufferSync(self._module, self.comm)
                              if broadcast_buffers and not self._alone and self._module is not None else None)
        if self._sync_buffers is not None and not self._sync_buffers.groups:
            self._sync_buffers = None
        self._thread = None if self._alone else CommThread(len(self.buckets), self._reduce_bucket,
                                                           self.poll_sleep_us * 1e-6)
        self._hooks = [] if self._alone else [p.register_post_accumulate_grad_hook(self._grad_ready)
                                               for p in self._params]
        if not self._alone and self._module is not None:
            self._hooks.append(self._module.register_forward_pre_hook(self._before_forward))

    def _set_node_aware(self, node_aware: Switch) -> None:
        """Choose the algorithm of uncompressed buckets, and cut compressed ones into per-node blocks."""
        # What uncompressed buckets run: allreduce's own (node-aware) choice, unless told otherwise.
        self.node_aware, self._blocks, self._algorithm = False, None, NODE_AWARE_AUTO
        if self.comm.Get_size() == 1:
            return
        if node_aware == "off":  # the choice by size alone, whatever the topology
            self._algorithm = FLAT_AUTO
            return
        groups = node_groups(self.comm)  # collective; every rank is here, after the handshake
        self.node_aware = groups.two_level if node_aware == "auto" else True
        if node_aware == "on":
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

    # What an optimizer stepping beside the reducer may ask of it (optim/interface.py's AveragingReducer).
    @property
    def params(self) -> list[torch.Tensor]:
        """The parameters it averages (those that require grad), in the model's registration order."""
        return self._params

    def keep_local_gradients(self) -> None:
        """From the next ``synchronize`` on, leave each rank's own gradients: the optimizer averages."""
        self.averaging = False

    def add_wire_bytes(self, nbytes: int) -> None:
        """Count bytes the optimizer sent averaging this step into the step's ``last_wire_bytes``."""
        self.last_wire_bytes += nbytes

    def _before_forward(self, module, inputs) -> None:
        """Before a forward that will backpropagate: each gradient set to None becomes its zeroed bucket view."""
        if not torch.is_grad_enabled():
            return
        for p in self._params:
            self.attach_gradient(p)

    def attach_gradient(self, p: torch.Tensor) -> None:
        """If ``p.grad`` is None, make it ``p``'s zeroed slice of its bucket, so that backward accumulates in place.

        What the forward pre-hook does for a module, for one parameter: call it
        before ``p``'s gradient is accumulated (a hook on ``p`` runs then). Local;
        a no-op on one rank, under ZeRO-2 (no full buffer between steps) and for
        a parameter the reducer does not average.

        >>> reducer.attach_gradient(p); p.grad.abs().sum().item()  # doctest: +SKIP
        0.0
        """
        if p.grad is not None or self._alone or self.zero == 2 or id(p) not in self._where:
            return
        bucket, i = self._where[id(p)]
        p.grad = bucket.view(i).zero_()
        self._zeroed.add(id(p))

    def passes(self, p: torch.Tensor) -> int:
        """How many backward passes gave ``p`` a gradient since the last ``synchronize`` (0 on one rank)."""
        return self._passes.get(id(p), 0)

    @property
    def pending(self) -> bool:
        """Whether some parameter received a gradient since the last ``synchronize`` (False on one rank)."""
        return bool(self._passes)

    def _grad_ready(self, p: torch.Tensor) -> None:
        passes = self._passes[id(p)] = self._passes.get(id(p), 0) + 1
        if not self._sync or not self.averaging or passes < self.backward_passes:
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
        has = id(p) in self._passes or (p.grad is not None and id(p) not in self._zeroed)
        bucket.flags[i] = has
        if not has or p.grad is None:
            view.zero_()
        elif p.grad.data_ptr() != view.data_ptr():
            view.copy_(p.grad)
            # From now on autograd accumulates into the bucket; ZeRO-2 frees the gradient instead.
            p.grad = None if self.zero == 2 else view

    def _reduce_bucket(self, index: int) -> None:
        bucket, compressor = self.buckets[index], self._averagers[index]
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

    def load_state_dict(self, state: dict, *, warn: bool = True) -> bool:
        """Load this rank's compression state; False (the state left at zero) where it was saved with another
        node layout, which rank 0 warns of if ``warn``."""
        if "compression" not in state:  # a ZeRO-3 run's (FSDP2 keeps none): it compressed nothing
            if any(c is not None for c in self.compressors):
                raise ValueError("the saved state holds no compression state, and this reducer compresses")
            return True
        saved = state["compression"]
        if state.get("blocks") != self._block_key():
            # Residuals of another cut of the bucket cannot be mapped onto this one.
            if warn and self.comm.Get_rank() == 0:
                print(f"ringtrain: warning: the compression state was saved with node layout {state.get('blocks')} "
                      f"(nodes, ranks per node, local rank; None: flat) and this run has {self._block_key()}: "
                      "error-feedback residuals start from zero", file=sys.stderr, flush=True)
            return False
        if len(saved) != len(self.compressors):
            raise ValueError(f"the saved reducer state has {len(saved)} buckets, this reducer {len(self.compressors)}")
        for compressor, s in zip(self.compressors, saved):
            if (compressor is None) != (s is None):
                raise ValueError("the saved reducer state was written with a different compression setting")
            if compressor is not None:
                compressor.load_state_dict(s)
        return True

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
        self._passes.clear()
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
            if id(p) in self._zeroed and id(p) not in self._passes:  # attached as zeros, never filled
                p.grad = None
        self._passes.clear()
        self._zeroed.clear()

    def close(self) -> None:
        """Remove the hooks and stop the communication thread."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self._thread is not None:
            self._thread.close()
            self._thread = None
