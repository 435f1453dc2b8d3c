"""The public collectives: allreduce, reduce_scatter, allgather and broadcast.

Each takes a contiguous numpy array or CPU torch tensor, works in place, and is
collective over ``comm`` (COMM_WORLD by default): every rank must call it with
the same element count, dtype and options. By default a 32-byte handshake
checks that first and raises CollectiveMismatchError on every rank if not
(``check=False``, or RINGTRAIN_CHECK=0, skips it where the caller has already
verified the layout, as the gradient reducer does).

Numerics: integer sums wrap like numpy's. float16 and bfloat16 are summed in
float32 (partial sums cross the wire as float32) and rounded once at the end,
so the result is the exact sum rounded to the 16-bit type, up to the float32
error of the partial sums: at most ``(size - 1) * 2**-24 * sum(|x|)``, far below
half a 16-bit ulp for any world size below a few thousand. "mean" divides in
the accumulation type before that rounding.

Threads: each collective holds its communicator's lock from start to end
(comm.Guard), so calls from several threads on one communicator run one at a
time, and never mix their messages. MPI pairs them across ranks in call order,
which between threads is a race; so the handshake also compares the calling
threads' names, once a communicator has seen two threads, and raises
ConcurrentCollectiveError on every rank where a call met another thread's.
Collectives that must run at the same time need a communicator per thread
(``comm.Dup()``, on every rank in the same order; MPI_THREAD_MULTIPLE). With
``check=False`` the lock still serializes, but pairing is the caller's promise.
"""
import numpy as np
from mpi4py import MPI

from ..environment import value_or_default
from . import waiting, workspace
from .algorithms import ALGORITHMS, BROADCAST_ALGORITHMS, BROADCAST_AUTO, NODE_AWARE_AUTO, OPS, SCATTER_ALGORITHMS
from .buffers import LOW_PRECISION, as_flat, narrow, widen
from .chain_broadcast import chain_broadcast
from .hierarchical import hierarchical_allgather, hierarchical_allreduce, hierarchical_bounds, \
    hierarchical_reduce_scatter
from .topology import cached_node_groups, node_groups
from .comm import CollectiveMismatchError, guard, handshake, private
from .layout import chunk_bounds
from .parameter_server import ps_allreduce
from .recursive_doubling import recursive_doubling_allreduce
from .ring import GATHER_SEGMENT_BYTES, ring_allgather, ring_reduce_scatter
from .signature import SIGNATURE
from .thresholds import choose_algorithm, choose_broadcast

_OP_CODES = {op: i for i, op in enumerate(OPS)}  # validation on the hot path; 0 is "sum"
_ALGORITHMS = frozenset(ALGORITHMS)
_WORLD, _IN_PLACE, _SUM = MPI.COMM_WORLD, MPI.IN_PLACE, MPI.SUM
_WORLD_GUARD = guard(_WORLD)  # the default communicator's, without a lookup per call
# Read at import, like the thresholds (thresholds.py says why).
CHECK = value_or_default("RINGTRAIN_CHECK")


def allreduce(x, op: str = "sum", algorithm: str = NODE_AWARE_AUTO, comm: MPI.Comm | None = None, *,
              check: bool | None = None, ring_min_bytes: int | None = None):
    """Reduce ``x`` in place across ranks and return it.

    ``op`` is "sum" or "mean" (mean needs a float dtype). ``algorithm`` is
    "auto" (``NODE_AWARE_AUTO``: by size, as ``choose_algorithm`` with the
    ranks' topology: native MPI for small messages, the ring from
    ``ring_min_bytes``, default RINGTRAIN_RING_MIN_BYTES or 16 MiB, and the
    node-aware ring from RINGTRAIN_HIERARCHICAL_MIN_BYTES where the ranks span
    several nodes), "ring", "recursive_doubling", "ps" (the parameter-server
    baseline), "mpi" (native MPI_Allreduce) or "hierarchical" (node-aware:
    rings inside nodes and across them; hierarchical.py). For the choice by
    size alone, whatever the topology (``FLAT_AUTO``), pass
    ``choose_algorithm(x.nbytes, comm.size)``. All ranks end with
    bitwise-identical results.

    >>> import ringtrain, numpy as np
    >>> ringtrain.allreduce(np.arange(4.0), op="mean", comm=MPI.COMM_SELF)
    array([0., 1., 2., 3.])
    """
    # Every small allreduce passes here, where the whole MPI call takes a
    # couple of microseconds: the common case must stay short.
    comm = _WORLD if comm is None else comm
    held = _WORLD_GUARD if comm is _WORLD else guard(comm)
    with held.lock:  # for the whole collective (comm.py, "Threads")
        try:
            a, dtype = as_flat(x)
            op_code = _OP_CODES.get(op)
            if op_code is None:
                raise ValueError(f"allreduce: op={op!r} is not supported; use one of {OPS}")
            if algorithm not in _ALGORITHMS:
                raise ValueError(f"allreduce: algorithm={algorithm!r} is not supported; use one of {ALGORITHMS}")
            if op_code and dtype[0] == "i":
                raise TypeError(f"allreduce: op='mean' needs a floating dtype, got {dtype}; "
                                "use op='sum' and divide as you need")
        except (TypeError, ValueError) as e:
            _refuse(comm, held, "allreduce", check, e)
        n = comm.Get_size()
        if n == 1:
            return x
        learn_topology = False
        if algorithm == NODE_AWARE_AUTO:
            # Topology unknown: one call answers every size the topology cannot change.
            algorithm = choose_algorithm(a.nbytes, n, ring_min_bytes, None)  # two_level: not known
            if algorithm == "hierarchical":  # where it depends on the nodes
                groups = cached_node_groups(comm)
                learn_topology = groups is None  # made below, once every rank is known to be here
                algorithm = choose_algorithm(a.nbytes, n, ring_min_bytes, two_level=bool(groups and groups.two_level))
        if CHECK if check is None else check:
            _check(comm, held, "allreduce", x, a, _CODES["allreduce", dtype, op, algorithm, 0])
        if learn_topology:
            # Collective, so only after the handshake (or check=False's promise) that
            # every rank made this same call: a mismatched call must raise, not hang here.
            algorithm = choose_algorithm(a.nbytes, n, ring_min_bytes, two_level=node_groups(comm).two_level)
        low = dtype in LOW_PRECISION
        if algorithm == "mpi" and not low:
            waiting.allreduce(comm, _IN_PLACE, a, _SUM)
            if op_code:
                np.divide(a, n, out=a)
            return x
        acc = widen(a, dtype, workspace.get("acc", np.float32, a.size)) if low else a
        if algorithm == "ring":
            priv = private(comm)
            lo, hi = ring_reduce_scatter(priv, acc)
            _finish(a, dtype, acc, op_code, n, lo, hi)
            # 16-bit types gather their rounded 16-bit values: half the bytes.
            ring_allgather(priv, a)
            return x
        if algorithm == "mpi":
            waiting.allreduce(comm, _IN_PLACE, acc, _SUM)
        elif algorithm == "recursive_doubling":
            recursive_doubling_allreduce(private(comm), acc)
        elif algorithm == "hierarchical":
            hierarchical_allreduce(comm, acc)
        else:
            ps_allreduce(private(comm), acc)
        _finish(a, dtype, acc, op_code, n, 0, a.size)
        return x


def _finish(a, dtype, acc, op_code, n, lo, hi) -> None:
    # Divide in the accumulation type, before any rounding to 16 bits.
    if op_code:
        np.divide(acc[lo:hi], n, out=acc[lo:hi])
    if acc is not a:
        narrow(acc[lo:hi], dtype, a[lo:hi])


def reduce_scatter(x, op: str = "sum", comm: MPI.Comm | None = None, *, algorithm: str = "ring",
                   check: bool | None = None):
    """Reduce-scatter in place; returns the piece of ``x`` this rank owns (a view).

    "ring": ``x`` is cut into ``comm.size`` chunks as ``chunk_bounds``
    describes, and chunk ``r`` of rank ``r`` holds the reduction afterwards.
    "hierarchical": node-aware (hierarchical.py); the owned pieces are
    ``hierarchical.hierarchical_bounds``, node-major inside each block, and a
    rank beyond the smallest node's size owns an empty piece. Elsewhere ``x``
    holds partial sums (for 16-bit types, the input).

    >>> import ringtrain, numpy as np
    >>> ringtrain.reduce_scatter(np.arange(3.0), comm=MPI.COMM_SELF)
    array([0., 1., 2.])
    """
    comm = _WORLD if comm is None else comm
    held = _WORLD_GUARD if comm is _WORLD else guard(comm)
    with held.lock:  # for the whole collective (comm.py, "Threads")
        try:
            a, dtype = as_flat(x)
            op_code = _OP_CODES.get(op)
            if op_code is None:
                raise ValueError(f"reduce_scatter: op={op!r} is not supported; use one of {OPS}")
            if op_code and dtype[0] == "i":
                raise TypeError(f"reduce_scatter: op='mean' needs a floating dtype, got {dtype}")
            _scatter_algorithm("reduce_scatter", algorithm)
        except (TypeError, ValueError) as e:
            _refuse(comm, held, "reduce_scatter", check, e)
        n = comm.Get_size()
        hierarchical = algorithm == "hierarchical"
        lo, hi = 0, a.size
        if n > 1:
            if CHECK if check is None else check:
                _check(comm, held, "reduce_scatter", x, a, _CODES["reduce_scatter", dtype, op, algorithm, 0])
            acc = widen(a, dtype, workspace.get("acc", np.float32, a.size)) if dtype in LOW_PRECISION else a
            lo, hi = (hierarchical_reduce_scatter(comm, acc) if hierarchical
                      else ring_reduce_scatter(private(comm), acc))
            _finish(a, dtype, acc, op_code, n, lo, hi)
        return x.reshape(-1)[lo:hi]


def allgather(x, comm: MPI.Comm | None = None, *, algorithm: str = "ring", check: bool | None = None):
    """Allgather in place: the piece each rank owns after ``reduce_scatter`` with the same
    ``algorithm`` is copied to every rank; returns ``x``.

    >>> import ringtrain, numpy as np
    >>> ringtrain.allgather(np.arange(3.0), comm=MPI.COMM_SELF)
    array([0., 1., 2.])
    """
    comm = _WORLD if comm is None else comm
    held = _WORLD_GUARD if comm is _WORLD else guard(comm)
    with held.lock:  # for the whole collective (comm.py, "Threads")
        try:
            a, dtype = as_flat(x)
            _scatter_algorithm("allgather", algorithm)
        except (TypeError, ValueError) as e:
            _refuse(comm, held, "allgather", check, e)
        if comm.Get_size() > 1:
            hierarchical = algorithm == "hierarchical"
            if CHECK if check is None else check:
                _check(comm, held, "allgather", x, a, _CODES["allgather", dtype, "sum", algorithm, 0])
            if hierarchical:
                hierarchical_allgather(comm, a)
            else:
                ring_allgather(private(comm), a)
        return x


def owned_bounds(count: int, comm: MPI.Comm | None = None, algorithm: str = "ring") -> tuple[int, int]:
    """The ``[lo, hi)`` piece of a ``count``-element buffer that ``reduce_scatter`` leaves on this rank.

    Collective the first time "hierarchical" is asked on a communicator (it learns the nodes).

    >>> owned_bounds(10, MPI.COMM_SELF)
    (0, 10)
    """
    comm = _WORLD if comm is None else comm
    _scatter_algorithm("owned_bounds", algorithm)
    if algorithm == "ring" or comm.Get_size() == 1:
        return chunk_bounds(count, comm.Get_size(), comm.Get_rank())
    with guard(comm).lock:  # learning the nodes is collective, like a collective call (comm.py, "Threads")
        groups = node_groups(comm)
    return hierarchical_bounds(groups, groups.local.Get_rank(), groups.cross.Get_rank(), count)


def _scatter_algorithm(what: str, algorithm: str) -> None:
    if algorithm not in SCATTER_ALGORITHMS:
        raise ValueError(f"{what}: algorithm={algorithm!r} is not supported; use one of {SCATTER_ALGORITHMS}")


def broadcast(x, root: int = 0, comm: MPI.Comm | None = None, *, algorithm: str = BROADCAST_AUTO,
              check: bool | None = None):
    """Copy ``x`` from ``root`` to every rank in place; returns ``x``.

    ``algorithm`` is "chain" (pipelined along the ring), "mpi" (native
    MPI_Bcast) or "auto" (``BROADCAST_AUTO``, as ``choose_broadcast``: chain
    from RINGTRAIN_CHAIN_MIN_BYTES, default 1 MiB).

    >>> import ringtrain, numpy as np
    >>> ringtrain.broadcast(np.arange(3.0), comm=MPI.COMM_SELF)
    array([0., 1., 2.])
    """
    comm = _WORLD if comm is None else comm
    held = _WORLD_GUARD if comm is _WORLD else guard(comm)
    with held.lock:  # for the whole collective (comm.py, "Threads")
        n = comm.Get_size()
        try:
            a, dtype = as_flat(x)
            if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < n:
                raise ValueError(f"broadcast: root={root!r} is not a rank of this communicator (0..{n - 1})")
            if algorithm not in BROADCAST_ALGORITHMS:
                raise ValueError(f"broadcast: algorithm={algorithm!r} is not supported; use one of "
                                 f"{BROADCAST_ALGORITHMS}")
            if algorithm == BROADCAST_AUTO:
                algorithm = choose_broadcast(a.nbytes)
            root = int(root)
            code = _CODES["broadcast", dtype, "sum", algorithm, root]  # refuses a root too large for its slot
        except (TypeError, ValueError) as e:
            _refuse(comm, held, "broadcast", check, e)
        if n == 1:
            return x
        if CHECK if check is None else check:
            _check(comm, held, "broadcast", x, a, code)
        if algorithm == "mpi":
            comm.Bcast(a, root)
        else:
            chain_broadcast(private(comm), a, root, GATHER_SEGMENT_BYTES)
        return x


def _refuse(comm, held, what, check, error):
    """Raise ``error``, after making every other rank raise too. Never returns.

    A rank that refuses its arguments would otherwise leave its peers waiting
    in the collective forever. It joins their handshake with an impossible
    element count (-1), so the handshake fails on every rank: the peers raise
    CollectiveMismatchError naming this rank's problem, and this rank raises
    its own error. With the handshake off (check=False) only this rank knows.
    """
    if comm.Get_size() > 1 and (CHECK if check is None else check):
        try:
            handshake(comm, what, -1, -1, lambda: f"an argument it refused ({error})", held)
        except CollectiveMismatchError:
            pass
    raise error


class _Codes(dict):
    """SIGNATURE.pack, memoized: ``_CODES[collective, dtype, op, algorithm, root]``.

    Every small allreduce packs its options, and a lookup costs half what a call
    would; there are a few dozen keys, and a broadcast's root or so more.
    """

    def __missing__(self, key):
        collective, dtype, op, algorithm, root = key
        code = self[key] = SIGNATURE.pack(collective=collective, dtype=dtype, op=op, algorithm=algorithm, root=root)
        return code


_CODES = _Codes()


def _check(comm, held, what, x, a, code):
    # Two numbers: the element count, and the code (signature.py).
    handshake(comm, what, a.size, code, lambda: _describe(what, x, code), held)


# The options each collective's error message names, read back from its code.
_OPTIONS = {"allreduce": ("op", "algorithm"), "reduce_scatter": ("op", "algorithm"), "allgather": ("algorithm",),
            "broadcast": ("root", "algorithm")}


def _describe(what, x, code) -> str:
    fields = SIGNATURE.unpack(code)
    return f"shape {tuple(x.shape)} {fields['dtype']}, " + ", ".join(f"{k}={fields[k]}" for k in _OPTIONS[what])
