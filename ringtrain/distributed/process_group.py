"""``ProcessGroupRingtrain``: torch.distributed's process-group interface on ringtrain's collectives over MPI.

Every method checks its arguments in the caller (a bad one raises there, on
the rank that passed it), then queues the collective on the group's
communication thread (comm_thread.py) and returns a work object at once.
Reductions take the paths reduce_ops.py describes: SUM, AVG and PREMUL_SUM of
floats run on ringtrain's allreduce (native MPI for small messages, the
pipelined ring from RINGTRAIN_RING_MIN_BYTES, the node-aware ring across
nodes); gathers and reduce-scatters of large buffers run on the ring's equal
chunks; everything else is MPI's own collective on the tensors' bytes.
Point-to-point messages are posted at once (Isend/Irecv) and completed by the
thread, so ``batch_isend_irecv`` never deadlocks on large messages.

RINGTRAIN_CHECK=1 turns on ringtrain's argument handshake for the collectives
it runs itself (mismatched calls raise on every rank); it is off by default
here, where torch has already fixed every rank's arguments.
"""
import atexit
import functools
import os

import torch
import torch.distributed as dist
from mpi4py import MPI

from .. import collectives
from ..collectives import traffic, waiting
from ..collectives.api import choose_algorithm
from ..collectives.buffers import SUPPORTED
from ..collectives.rank_ordered import node_aware_allgather, node_aware_reduce_scatter, node_grid
from ..collectives import thresholds
from ..fault.watchdog import Watchdog
from .comm_thread import CommThread
from .reduce_ops import plan
from .tensors import as_array, as_bytes, check_cpu, contiguous, same_memory

_RING_DTYPES = {getattr(torch, name) for name in SUPPORTED}


@functools.cache
def _tag_upper_bound() -> int:
    return MPI.COMM_WORLD.Get_attr(MPI.TAG_UB)  # MPI attaches it to the world communicator, once


_UNKNOWN = object()
_WIDE_FLOATS = (torch.float32, torch.float64)  # summed in their own type; 16-bit ones take the widening ring


def _options(opts, cls):
    return cls() if opts is None else opts


class ProcessGroupRingtrain(dist.ProcessGroup):
    """One torch process group on one MPI communicator (``comm``, owned by the group)."""

    def __init__(self, comm: MPI.Comm, name: str, timeout: float | None = None):
        super().__init__(comm.Get_rank(), comm.Get_size())
        self.comm, self._name, self._desc = comm, name, ""
        self.n, self.me = comm.Get_size(), comm.Get_rank()
        self.check = os.environ.get("RINGTRAIN_CHECK", "0").lower() in ("1", "true")
        self._buffers: dict[torch.dtype, torch.Tensor] = {}  # scratch, by dtype (_scratch)
        self._grid = _UNKNOWN  # the node grid of a node-aware allgather; learnt on the first large gather
        # A deadline on every collective: a dead or stalled peer is named and the job ends (comm_thread.py).
        watchdog = Watchdog(comm, timeout) if timeout is not None and self.n > 1 else None
        self.thread = CommThread(f"ringtrain-pg-{name}", watchdog, timeout)
        # A script that never calls destroy_process_group must still stop the threads that call MPI
        # before mpi4py's MPI_Finalize, which atexit runs after this (last registered, first run).
        atexit.register(self._at_exit)

    # -- identity ---------------------------------------------------------------------------------
    def getBackendName(self) -> str:
        return "ringtrain"

    def setGroupName(self, name: str) -> None:  # DeviceMesh reads it back: no C++ backend holds it for us
        self._name = name

    def getGroupName(self) -> str:
        return self._name

    def setGroupDesc(self, desc: str) -> None:
        self._desc = desc

    def getGroupDesc(self) -> str:
        return self._desc

    def shutdown(self) -> None:
        """Finish the queued collectives, stop the thread and free the communicator."""
        if self.comm is not None:
            self.thread.close()
            self.comm.Free()
            self.comm = None

    def abort(self) -> None:
        self.shutdown()

    def _at_exit(self) -> None:
        if self.comm is not None and self.thread.close(timeout=5.0):
            self.comm.Free()
            self.comm = None

    # -- reductions -------------------------------------------------------------------------------
    def allreduce(self, tensors, opts=None):
        opts = _options(opts, dist.AllreduceOptions)
        check_cpu(tensors, "allreduce")
        plans = [plan(opts.reduceOp, t.dtype) for t in tensors]
        return self.thread.submit(lambda: [self._allreduce(t, p) for t, p in zip(tensors, plans)], tensors, "all_reduce")

    def allreduce_coalesced(self, tensors, opts=None):
        return self.allreduce(tensors, _options(opts, dist.AllreduceCoalescedOptions))

    def _allreduce(self, t, p) -> None:
        buf, back = contiguous(t)
        if p.premul is not None:
            buf.mul_(p.premul)
        if p.ringtrain is not None:
            collectives.allreduce(buf, op=p.ringtrain, comm=self.comm, check=self.check)
        else:
            work = buf.float() if p.widen else buf
            waiting.allreduce(self.comm, MPI.IN_PLACE, as_array(work), p.mpi_op)
            if p.divide:
                work.div_(self.n)
            if work is not buf:
                buf.copy_(work)
        back()

    def reduce(self, tensors, opts=None):
        opts = _options(opts, dist.ReduceOptions)
        check_cpu(tensors, "reduce")
        plans = [plan(opts.reduceOp, t.dtype) for t in tensors]
        root = self._root(opts.rootRank, "reduce")
        return self.thread.submit(lambda: [self._reduce(t, p, root) for t, p in zip(tensors, plans)], tensors, "reduce")

    def _reduce(self, t, p, root: int) -> None:
        # MPI_Reduce for every op; 16-bit floats in float32, AVG as a sum divided on the root.
        buf, back = contiguous(t)
        if p.premul is not None:
            buf.mul_(p.premul)
        wide = buf.dtype in (torch.float16, torch.bfloat16)
        work = buf.float() if wide else buf
        array = as_array(work)
        op = p.mpi_op if p.mpi_op is not None else MPI.SUM
        if self.me == root:
            waiting.wait_all([self.comm.Ireduce(MPI.IN_PLACE, array, op, root)])
            if p.divide or p.ringtrain == "mean":
                work.div_(self.n)
            if work is not buf:
                buf.copy_(work)
            back()
        else:
            waiting.wait_all([self.comm.Ireduce(array, None, op, root)])

    def reduce_scatter(self, outputs, input_lists, opts=None):
        opts = _options(opts, dist.ReduceScatterOptions)
        check_cpu(outputs, "reduce_scatter")
        for out, inputs in zip(outputs, input_lists):
            self._pieces(inputs, out, "reduce_scatter")
        plans = [plan(opts.reduceOp, out.dtype) for out in outputs]

        def run():
            for out, inputs, p in zip(outputs, input_lists, plans):
                flat = self._scratch(sum(x.numel() for x in inputs), out.dtype)
                self._reduce_scatter(torch.cat([x.reshape(-1) for x in inputs], out=flat), out, p)
        return self.thread.submit(run, outputs, "reduce_scatter")

    def reduce_scatter_single(self, output, input, opts=None):
        opts = _options(opts, dist.ReduceScatterOptions)
        check_cpu([output, input], "reduce_scatter_tensor")
        self._equal_split(input, output, "reduce_scatter_tensor")
        p = plan(opts.reduceOp, output.dtype)
        return self.thread.submit(lambda: self._reduce_scatter(self._scratch_copy(input), output, p), [output],
                                  "reduce_scatter_tensor")

    _reduce_scatter_base = reduce_scatter_single

    def reduce_scatter_tensor_coalesced(self, outputs, inputs, opts=None):
        opts = _options(opts, dist.ReduceScatterOptions)
        check_cpu(list(outputs) + list(inputs), "reduce_scatter_tensor_coalesced")
        for out, x in zip(outputs, inputs):
            self._equal_split(x, out, "reduce_scatter_tensor_coalesced")
        plans = [plan(opts.reduceOp, out.dtype) for out in outputs]
        return self.thread.submit(lambda: [self._reduce_scatter(self._scratch_copy(x), out, p)
                                           for out, x, p in zip(outputs, inputs, plans)], list(outputs),
                                  "reduce_scatter_tensor_coalesced")

    reduce_scatter_single_coalesced = reduce_scatter_tensor_coalesced

    def _scratch(self, count: int, dtype: torch.dtype) -> torch.Tensor:
        """A flat buffer kept between calls (on the communication thread only): a fresh 64 MiB tensor costs
        its page faults, three times the copy into a reused one."""
        buf = self._buffers.get(dtype)
        if buf is None or buf.numel() < count:
            buf = self._buffers[dtype] = torch.empty(count, dtype=dtype)
        return buf[:count]

    def _scratch_copy(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` copied flat into the scratch buffer: the ring reduces in place, and the input must come back
        unchanged."""
        flat = self._scratch(x.numel(), x.dtype)
        flat.copy_(x.reshape(-1))
        return flat

    def _node_grid(self, nbytes: int):
        """The node grid for a node-aware collective of ``nbytes`` (rank_ordered.py), or None: a small message,
        one node, or nodes of different sizes. Learnt at the first large one, on this group's thread, which
        meets it at the same call on every rank (learning is collective)."""
        if nbytes < thresholds.THRESHOLDS.hierarchical_min_bytes or self.n < 4:
            return None
        if self._grid is _UNKNOWN:
            self._grid = node_grid(self.comm)
        return self._grid

    def _reduce_scatter(self, flat, out, p) -> None:
        """Reduce ``flat`` (a scratch copy, n equal pieces) and put this rank's piece into ``out``."""
        k = out.numel()
        if p.premul is not None:
            flat.mul_(p.premul)
        grid = self._node_grid(flat.nbytes) if p.ringtrain is not None and flat.dtype in _WIDE_FLOATS else None
        if grid is not None:  # several nodes of equal size: across the links once (rank_ordered.py)
            piece = torch.from_numpy(node_aware_reduce_scatter(self.comm, flat.numpy(), grid))
            if p.ringtrain == "mean":
                piece.div_(self.n)
        elif p.ringtrain is not None:
            piece = collectives.reduce_scatter(flat, op=p.ringtrain, comm=self.comm, check=self.check)
        else:
            work = flat.float() if p.widen else flat
            piece = torch.empty(k, dtype=work.dtype)
            waiting.wait_all([self.comm.Ireduce_scatter_block(as_array(work), as_array(piece), p.mpi_op)])
            if p.divide:
                piece.div_(self.n)
        out.copy_(piece.reshape(out.shape))

    # -- moving data ------------------------------------------------------------------------------
    def broadcast(self, tensors, opts=None):
        opts = _options(opts, dist.BroadcastOptions)
        check_cpu(tensors, "broadcast")
        root = self._root(opts.rootRank, "broadcast")

        def run():
            for t in tensors:
                buf, back = contiguous(t)
                if buf.dtype in _RING_DTYPES:
                    collectives.broadcast(buf, root=root, comm=self.comm, check=self.check)
                else:
                    waiting.wait_all([self.comm.Ibcast(as_bytes(buf), root)])
                back()
        return self.thread.submit(run, tensors, "broadcast")

    def allgather(self, output_lists, inputs, opts=None):
        check_cpu(inputs, "allgather")
        for outs, x in zip(output_lists, inputs):
            self._pieces(outs, x, "allgather")

        def run():
            for outs, x in zip(output_lists, inputs):
                flat = self._scratch(self.n * x.numel(), x.dtype)
                self._gather_into(flat, x)
                for out, piece in zip(outs, flat.chunk(self.n) if x.numel() else [flat] * self.n):
                    out.copy_(piece.reshape(out.shape))
        return self.thread.submit(run, output_lists, "all_gather")

    def all_gather_single(self, output, input, opts=None):
        check_cpu([output, input], "all_gather_into_tensor")
        self._equal_split(output, input, "all_gather_into_tensor")
        return self.thread.submit(lambda: self._gather_tensor(output, input), [output], "all_gather_into_tensor")

    _allgather_base = all_gather_single

    def allgather_into_tensor_coalesced(self, outputs, inputs, opts=None):
        check_cpu(list(outputs) + list(inputs), "allgather_into_tensor_coalesced")
        for out, x in zip(outputs, inputs):
            self._equal_split(out, x, "allgather_into_tensor_coalesced")
        return self.thread.submit(lambda: [self._gather_tensor(out, x) for out, x in zip(outputs, inputs)],
                                  list(outputs), "allgather_into_tensor_coalesced")

    all_gather_single_coalesced = allgather_into_tensor_coalesced

    def allgather_coalesced(self, output_lists, inputs, opts=None):
        return self.allgather(output_lists, inputs, opts)

    def _gather_tensor(self, output, x) -> None:
        buf, back = contiguous(output)
        self._gather_into(buf.reshape(-1), x)
        back()

    def _gather_into(self, flat, x) -> None:
        """Every rank's ``x`` into its equal piece of the contiguous ``flat``, in place when ``x`` is that piece."""
        k = x.numel()
        mine = flat[self.me * k:(self.me + 1) * k]
        if not same_memory(mine, x):
            mine.copy_(x.reshape(-1))
        if self.n == 1:
            return
        grid = self._node_grid(flat.nbytes)
        if grid is not None:
            node_aware_allgather(self.comm, as_bytes(flat), grid)
            return
        if flat.dtype in _RING_DTYPES and choose_algorithm(flat.nbytes, self.n) == "ring":
            collectives.allgather(flat, comm=self.comm, check=self.check)
        else:
            waiting.allgather(self.comm, MPI.IN_PLACE, as_bytes(flat))

    def gather(self, output_lists, inputs, opts=None):
        opts = _options(opts, dist.GatherOptions)
        check_cpu(inputs, "gather")
        root = self._root(opts.rootRank, "gather")

        def run():
            x = inputs[0].contiguous()
            if self.me == root:
                flat = torch.empty(self.n * x.numel(), dtype=x.dtype)
                waiting.wait_all([self.comm.Igather(as_bytes(x), as_bytes(flat), root)])
                for out, piece in zip(output_lists[0], flat.chunk(self.n) if x.numel() else [flat] * self.n):
                    out.copy_(piece.reshape(out.shape))
            else:
                waiting.wait_all([self.comm.Igather(as_bytes(x), None, root)])
        return self.thread.submit(run, output_lists, "gather")

    def scatter(self, outputs, input_lists, opts=None):
        opts = _options(opts, dist.ScatterOptions)
        check_cpu(outputs, "scatter")
        root = self._root(opts.rootRank, "scatter")

        def run():
            buf, back = contiguous(outputs[0])
            send = None
            if self.me == root:
                send = as_bytes(torch.cat([x.reshape(-1) for x in input_lists[0]]))
            waiting.wait_all([self.comm.Iscatter(send, as_bytes(buf), root)])
            back()
        return self.thread.submit(run, outputs, "scatter")

    def alltoall_base(self, output, input, output_splits, input_splits, opts=None):
        check_cpu([output, input], "all_to_all_single")
        send_counts = self._split_bytes(input, input_splits, "input_split_sizes")
        recv_counts = self._split_bytes(output, output_splits, "output_split_sizes")

        def run():
            out, back = contiguous(output)
            self._alltoallv(input.contiguous(), send_counts, out, recv_counts)
            back()
        return self.thread.submit(run, [output], "all_to_all_single")

    all_to_all_single = alltoall_base

    def alltoall(self, outputs, inputs, opts=None):
        check_cpu(list(outputs) + list(inputs), "all_to_all")

        def run():
            flat_out = torch.empty(sum(o.numel() for o in outputs), dtype=outputs[0].dtype)
            send = torch.cat([x.reshape(-1) for x in inputs])
            self._alltoallv(send, [x.numel() * x.element_size() for x in inputs], flat_out,
                            [o.numel() * o.element_size() for o in outputs])
            offset = 0
            for o in outputs:
                o.copy_(flat_out[offset:offset + o.numel()].reshape(o.shape))
                offset += o.numel()
        return self.thread.submit(run, list(outputs), "all_to_all")

    def _alltoallv(self, send, send_counts, recv, recv_counts) -> None:
        def displacements(counts):
            return [sum(counts[:i]) for i in range(len(counts))]
        waiting.wait_all([self.comm.Ialltoallv([as_bytes(send), (send_counts, displacements(send_counts)), MPI.BYTE],
                                               [as_bytes(recv), (recv_counts, displacements(recv_counts)), MPI.BYTE])])

    def barrier(self, opts=None):
        return self.thread.submit(lambda: waiting.wait_all([self.comm.Ibarrier()]), [], "barrier")

    # -- point to point ---------------------------------------------------------------------------
    def send(self, tensors, dst: int, tag: int = 0):
        check_cpu(tensors, "send")
        self._peer(dst, "send")
        buffers = [t.contiguous() for t in tensors]  # kept alive until the work completes
        requests = [self.comm.Isend(as_bytes(b), dst, self._tag(tag)) for b in buffers]
        traffic.sent(sum(b.numel() * b.element_size() for b in buffers))  # a pipeline's activations, counted
        return self.thread.submit(lambda: waiting.wait_all(requests), tensors, f"send to rank {dst}")

    def recv(self, tensors, src: int, tag: int = 0):
        check_cpu(tensors, "recv")
        self._peer(src, "recv")
        return self._receive(tensors, src, tag)

    def recv_anysource(self, tensors, tag: int = 0):
        check_cpu(tensors, "recv")
        return self._receive(tensors, MPI.ANY_SOURCE, tag)

    def _receive(self, tensors, src: int, tag: int):
        held = [contiguous(t) for t in tensors]
        requests = [self.comm.Irecv(as_bytes(buf), src, self._tag(tag)) for buf, _ in held]

        def run():
            waiting.wait_all(requests)
            for _, back in held:
                back()
        peer = "any rank" if src == MPI.ANY_SOURCE else f"rank {src}"
        return self.thread.submit(run, tensors, f"recv from {peer}")

    # -- argument checks, in the caller ---------------------------------------------------------
    def _root(self, root: int, what: str) -> int:
        if not 0 <= root < self.n:
            raise ValueError(f"ringtrain backend: {what}: root rank {root} is not in this group (0..{self.n - 1})")
        return root

    def _peer(self, peer: int, what: str) -> None:
        if not 0 <= peer < self.n:
            raise ValueError(f"ringtrain backend: {what}: peer rank {peer} is not in this group (0..{self.n - 1})")

    def _tag(self, tag: int) -> int:
        upper = _tag_upper_bound()
        if not 0 <= tag <= upper:
            raise ValueError(f"ringtrain backend: tag {tag} is outside MPI's tags (0..{upper})")
        return tag

    def _pieces(self, pieces, whole, what: str) -> None:
        if len(pieces) != self.n:
            raise ValueError(f"ringtrain backend: {what} needs one tensor per rank ({self.n}), got {len(pieces)}")
        for piece in pieces:
            if piece.numel() != whole.numel() or piece.dtype != whole.dtype:
                raise ValueError(f"ringtrain backend: {what}: every piece must have {whole.numel()} elements of "
                                 f"{whole.dtype}, got {piece.numel()} of {piece.dtype}")

    def _equal_split(self, whole, piece, what: str) -> None:
        if whole.numel() != self.n * piece.numel() or whole.dtype != piece.dtype:
            raise ValueError(f"ringtrain backend: {what}: the larger tensor must hold {self.n} x {piece.numel()} "
                             f"elements of {piece.dtype}, got {whole.numel()} of {whole.dtype}")

    def _split_bytes(self, t, splits, name: str) -> list[int]:
        rows = t.shape[0] if t.dim() else 1
        row_bytes = (t.numel() // rows if rows else 0) * t.element_size()
        if not splits:
            if rows % self.n:
                raise ValueError(f"ringtrain backend: all_to_all_single: {rows} rows do not split evenly over "
                                 f"{self.n} ranks; give {name}")
            return [rows // self.n * row_bytes] * self.n
        if len(splits) != self.n or sum(splits) != rows or min(splits) < 0:
            raise ValueError(f"ringtrain backend: all_to_all_single: {name}={list(splits)} must be {self.n} "
                             f"sizes >= 0 adding up to the tensor's {rows} rows")
        return [s * row_bytes for s in splits]
