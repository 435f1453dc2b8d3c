"""Horovod's basics on MPI: init, shutdown, the job's shape, and what this build has.

``init`` takes the world from MPI (COMM_WORLD, or the communicator given), as
Horovod's MPI controller does; ``local_*`` are the ranks that share this
rank's node (``Split_type(COMM_TYPE_SHARED)``, or RINGTRAIN_NODE_SIZE's
forced nodes, as ringtrain's node-aware ring sees them), and ``cross_*`` the
ranks with this rank's local rank, one per node. Every query before ``init``
raises ValueError, as Horovod's do.
"""
from mpi4py import MPI

from ..collectives.topology import node_groups

# Horovod's reduce-op constants, with its values, so that code comparing them or passing ints keeps working.
Average, Sum, Adasum, Min, Max, Product = 0, 1, 2, 3, 4, 5

NOT_INITIALIZED = "Horovod has not been initialized; use hvd.init()."


class _Job:
    """The initialized state: the job's communicator, its node groups, and one duplicate per user of MPI.

    Each part that talks runs on its own duplicate, made here, at ``init``, on
    every rank in the same order: made later, on first use, the parts' first
    uses could come in a different order on different ranks, and so would the
    collective Dups. Apart, the engine's thread, the reducer's thread and the
    main thread never meet on one communicator (ringtrain's collectives raise
    ConcurrentCollectiveError where two threads do).
    """

    __slots__ = ("comm", "local", "cross", "engine", "state", "norm")

    def __init__(self, comm: MPI.Comm):
        self.comm = comm
        """The job's ranks; DistributedOptimizer's reducer talks on it (on ringtrain's private duplicate)."""
        groups = node_groups(comm)
        self.local, self.cross = groups.local, groups.cross
        self.engine = comm.Dup()
        """The collectives' engine thread (allreduce, allgather, broadcast, ... and their handles)."""
        self.state = comm.Dup()
        """broadcast_parameters and broadcast_optimizer_state, on the main thread."""
        self.norm = comm.Dup()
        """SyncBatchNorm's statistics, on the thread that runs forward and backward."""

    def free(self) -> None:
        for c in (self.engine, self.state, self.norm):
            c.Free()


_job: _Job | None = None


def init(comm: "MPI.Comm | list[int] | None" = None, process_sets=None) -> None:
    """Start ringtrain.horovod on ``comm`` (default COMM_WORLD); a second call is a no-op, as in Horovod.

    ``comm`` may also be a list of COMM_WORLD ranks, as Horovod accepts; those
    ranks form the job. Collective over the job's ranks.

    >>> init(MPI.COMM_SELF); size()
    1
    >>> shutdown()
    """
    global _job
    if _job is not None:
        return
    if not MPI.Is_initialized():  # mpi4py initializes at import; this is only a guard against a finalized MPI
        raise RuntimeError("ringtrain.horovod.init: MPI is not initialized")
    if comm is None:
        comm = MPI.COMM_WORLD
    elif isinstance(comm, (list, tuple)):
        ranks = [int(r) for r in comm]
        world = MPI.COMM_WORLD
        if sorted(set(ranks)) != sorted(ranks) or not all(0 <= r < world.Get_size() for r in ranks):
            raise ValueError(f"hvd.init: comm={comm!r} must list distinct COMM_WORLD ranks in 0..{world.Get_size() - 1}")
        comm = world.Create_group(world.Get_group().Incl(ranks))
    elif not isinstance(comm, MPI.Comm):
        raise ValueError(f"hvd.init: comm={comm!r} must be an mpi4py communicator, a list of ranks, or None")
    _job = _Job(comm)
    from .process_sets import _init_process_sets  # noqa: PLC0415  (process sets build on the job)
    _init_process_sets(process_sets)


def shutdown() -> None:
    """Stop ringtrain.horovod; ``init`` may be called again afterwards. MPI itself stays up (mpi4py finalizes it)."""
    global _job
    if _job is None:
        return
    from .engine import _stop_engine  # noqa: PLC0415  (the engine is started lazily by the first operation)
    from .process_sets import _shutdown_process_sets  # noqa: PLC0415
    _stop_engine()
    _shutdown_process_sets()
    _job.free()
    _job = None


def is_initialized() -> bool:
    """Whether ``init`` was called (and ``shutdown`` not since)."""
    return _job is not None


def job() -> _Job:
    """The initialized job; ValueError before ``init``, with Horovod's message."""
    if _job is None:
        raise ValueError(NOT_INITIALIZED)
    return _job


def rank() -> int:
    """This process's rank in the job."""
    return job().comm.Get_rank()


def size() -> int:
    """The number of processes in the job."""
    return job().comm.Get_size()


def local_rank() -> int:
    """This process's rank among the processes on its node."""
    return job().local.Get_rank()


def local_size() -> int:
    """The number of processes on this process's node."""
    return job().local.Get_size()


def cross_rank() -> int:
    """This process's node's index among the nodes that have a process with its local rank."""
    return job().cross.Get_rank()


def cross_size() -> int:
    """The number of nodes that have a process with this process's local rank."""
    return job().cross.Get_size()


def is_homogeneous() -> bool:
    """Whether every node runs the same number of processes. Collective."""
    j = job()
    return j.comm.allreduce(j.local.Get_size(), op=MPI.MIN) == j.comm.allreduce(j.local.Get_size(), op=MPI.MAX)


def mpi_threads_supported() -> bool:
    """Whether MPI runs with MPI_THREAD_MULTIPLE, as Horovod answers it."""
    job()
    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


# What this build has. ringtrain always talks over MPI; it has no gloo, NCCL, DDL, oneCCL, CUDA or ROCm
# operations of Horovod's kind, so those answer False.
def mpi_built() -> bool:
    """True: ringtrain's collectives run over MPI (mpi4py)."""
    return True


def mpi_enabled() -> bool:
    """True once initialized: every operation goes over MPI."""
    return is_initialized()


def gloo_built() -> bool:
    """False: there is no gloo controller here."""
    return False


def gloo_enabled() -> bool:
    """False: there is no gloo controller here."""
    return False


def nccl_built() -> int:
    """0 (False): no NCCL operations; Horovod returns the NCCL version or 0."""
    return 0


def ddl_built() -> bool:
    """False: no IBM DDL."""
    return False


def ccl_built() -> bool:
    """False: no oneCCL."""
    return False


def cuda_built() -> bool:
    """False: ringtrain.horovod works on CPU tensors."""
    return False


def rocm_built() -> bool:
    """False: ringtrain.horovod works on CPU tensors."""
    return False
