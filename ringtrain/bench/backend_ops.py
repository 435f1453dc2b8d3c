"""The collectives ``bench backend`` times: one class per torch.distributed call, with MPI's own as its peer.

Each case owns its buffers (float32 tensors; MPI's peer works on numpy views
of the same memory) and knows three things: how to run the call on a torch
group or, with ``group=None``, as MPI's collective through mpi4py; how to put
checkable values in and count the wrong elements after one call, from a
closed form in the rank and the world size; and nccl-tests' bus-bandwidth
factor, the share of the buffer each rank must move::

    >>> AllGather.busbw_factor(4), AllReduce.busbw_factor(4), Broadcast.busbw_factor(4)
    (0.75, 1.5, 1.0)

``size`` is the larger buffer's bytes, as in nccl-tests: the gathered output,
the scattered input, each rank's all-to-all buffer. Values stay small integers
(a pattern of period 13 times at most n(n+1)/2), so float32 carries them
exactly and a right answer is equal, not close.
"""
import numpy as np
import torch
import torch.distributed as dist
from mpi4py import MPI

PERIOD = 13


def _pattern(count: int) -> torch.Tensor:
    return torch.arange(count, dtype=torch.float32).remainder_(PERIOD)


def _wrong(got: torch.Tensor, expected: torch.Tensor) -> int:
    return int(torch.count_nonzero(got != expected))


class Case:
    """Buffers of ``count`` float32 elements (the larger buffer) on ``comm``'s ranks; the result lands in ``out``."""

    name = ""
    mpi_call = ""
    redop = "none"
    splits = False  # the larger buffer is n equal pieces, so count must be a multiple of n

    def __init__(self, count: int, comm: MPI.Comm):
        self.comm, self.n, self.rank, self.count = comm, comm.Get_size(), comm.Get_rank(), count
        self.k = count // self.n if self.splits else count  # one rank's piece
        self.out = torch.zeros(count)

    @classmethod
    def elements(cls, nbytes: int, n: int) -> int:
        """The element count a row of ``nbytes`` gets: whole float32s, n equal pieces where the call splits."""
        count = max(1, nbytes // 4)
        return max(n, count - count % n) if cls.splits else count

    @staticmethod
    def busbw_factor(n: int) -> float:
        """nccl-tests' factor from algbw to busbw: (n-1)/n for gathers, reduce-scatters and all-to-all."""
        return (n - 1) / n

    def run(self, group) -> None:
        """One synchronous call on torch ``group``, or MPI's own collective when ``group`` is None."""
        self.on_mpi() if group is None else self.on_group(group)

    def on_mpi(self) -> None:
        raise NotImplementedError

    def on_group(self, group) -> None:
        raise NotImplementedError

    def expected(self) -> torch.Tensor:
        """What ``out`` must hold after one call on the checkable inputs."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Checkable inputs in place; by default only ``out`` is spoiled, so a call that does nothing is caught."""
        self.out.fill_(-1)

    def wrong(self, group) -> int:
        """This rank's wrong elements after one call on checkable inputs."""
        self.prepare()
        self.run(group)
        return _wrong(self.out, self.expected())


class AllReduce(Case):
    name, mpi_call, redop = "all_reduce", "MPI_Allreduce", "sum"
    # In place on ``out``, zeros while timing: summing over and over must not grow the buffer to inf.

    @staticmethod
    def busbw_factor(n):
        return 2 * (n - 1) / n

    def on_mpi(self):
        self.comm.Allreduce(MPI.IN_PLACE, self.out.numpy(), op=MPI.SUM)

    def on_group(self, group):
        dist.all_reduce(self.out, group=group)

    def prepare(self):
        self.out.copy_(_pattern(self.count) * (self.rank + 1))

    def expected(self):
        return _pattern(self.count) * (self.n * (self.n + 1) // 2)  # sum_r (r + 1) p

    def wrong(self, group):
        bad = super().wrong(group)
        self.out.zero_()
        return bad


class AllGather(Case):
    name, mpi_call, splits = "all_gather_into_tensor", "MPI_Allgather", True

    def __init__(self, count, comm):
        super().__init__(count, comm)
        self.inp = _pattern(self.k) + PERIOD * self.rank  # rank r's piece: the pattern lifted by 13 r

    def on_mpi(self):
        self.comm.Allgather(self.inp.numpy(), self.out.numpy())

    def on_group(self, group):
        dist.all_gather_into_tensor(self.out, self.inp, group=group)

    def expected(self):
        return torch.cat([_pattern(self.k) + PERIOD * r for r in range(self.n)])


class ReduceScatter(Case):
    name, mpi_call, redop, splits = "reduce_scatter_tensor", "MPI_Reduce_scatter_block", "sum", True

    def __init__(self, count, comm):
        super().__init__(count, comm)
        self.inp = _pattern(count) * (self.rank + 1)  # unchanged by the call, so it can stay patterned
        self.out = torch.zeros(self.k)

    def on_mpi(self):
        self.comm.Reduce_scatter_block(self.inp.numpy(), self.out.numpy(), op=MPI.SUM)

    def on_group(self, group):
        dist.reduce_scatter_tensor(self.out, self.inp, group=group)

    def expected(self):
        mine = _pattern(self.count)[self.rank * self.k:(self.rank + 1) * self.k]
        return mine * (self.n * (self.n + 1) // 2)

    def wrong(self, group):
        # The input must also come back as it went in.
        return super().wrong(group) + _wrong(self.inp, _pattern(self.count) * (self.rank + 1))


class Broadcast(Case):
    name, mpi_call = "broadcast", "MPI_Bcast"
    ROOT = 0  # in place on ``out``, which holds the pattern on the root

    def __init__(self, count, comm):
        super().__init__(count, comm)
        if self.rank == self.ROOT:
            self.out.copy_(_pattern(count))

    @staticmethod
    def busbw_factor(n):
        return 1.0

    def on_mpi(self):
        self.comm.Bcast(self.out.numpy(), root=self.ROOT)

    def on_group(self, group):
        dist.broadcast(self.out, src=self.ROOT, group=group)

    def prepare(self):
        if self.rank != self.ROOT:
            self.out.fill_(-1)

    def expected(self):
        return _pattern(self.count)


class AllToAll(Case):
    name, mpi_call, splits = "all_to_all_single", "MPI_Alltoall", True

    def __init__(self, count, comm):
        super().__init__(count, comm)
        # The piece rank r sends to rank j is the pattern lifted by 13 (r n + j): every piece is distinct.
        self.inp = torch.cat([self._piece(self.rank, j) for j in range(self.n)])

    def _piece(self, sender: int, receiver: int) -> torch.Tensor:
        return _pattern(self.k) + PERIOD * (sender * self.n + receiver)

    def on_mpi(self):
        self.comm.Alltoall(self.inp.numpy(), self.out.numpy())

    def on_group(self, group):
        dist.all_to_all_single(self.out, self.inp, group=group)

    def expected(self):
        return torch.cat([self._piece(j, self.rank) for j in range(self.n)])


CASES = {case.name: case for case in (AllReduce, AllGather, ReduceScatter, Broadcast, AllToAll)}


def count_wrong(case: Case, group) -> int:
    """Wrong elements over every rank after one checked call. Collective over ``case.comm``."""
    bad = np.array([case.wrong(group)], dtype=np.int64)
    case.comm.Allreduce(MPI.IN_PLACE, bad, op=MPI.SUM)
    return int(bad[0])
