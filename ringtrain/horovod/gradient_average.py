"""The average of gradients over a process set: the backward step of allgather and broadcast.

Horovod differentiates allgather and broadcast by averaging the incoming
gradient over the process set (an allreduce with Average) and then keeping this
rank's share: its own rows for allgather, everything on the root (zero
elsewhere) for broadcast. The average goes through the engine, in order with
the other operations, as Horovod's allreduce does.
"""
import numpy as np
import torch
from mpi4py import MPI

from .. import collectives
from . import engine
from .tensor_views import RINGTRAIN_SUMS, byte_view, dense


def average(tensors, process_set) -> list[torch.Tensor]:
    """Each of ``tensors`` averaged over ``process_set``, as new tensors; collective over the set.

    >>> average([torch.ones(2)], None)   # needs hvd.init()  # doctest: +SKIP
    [tensor([1., 1.])]
    """
    copies = [dense(t).clone() for t in tensors]  # reduced in place; the caller's gradients stay as they were
    describe = {"tensors": tuple((str(t.dtype), tuple(t.shape)) for t in copies)}
    handle = engine.submit("gradient_average", None, describe, lambda comm: _average_in_place(comm, copies),
                           process_set)
    return engine.synchronize(handle)


def _average_in_place(comm: MPI.Comm, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    n = comm.Get_size()
    for t in tensors:
        if n == 1 or t.numel() == 0:
            continue
        if t.dtype in RINGTRAIN_SUMS and t.is_floating_point():
            # Floats only: the mean divides in the accumulation type, before 16-bit rounding.
            # check=False: the engine has already compared dtype and shape across the set.
            collectives.allreduce(t, op="mean", comm=comm, check=False)
        else:  # complex gradients: MPI adds their numpy views natively
            data = byte_view(t).view(np.dtype(str(t.dtype).removeprefix("torch.")))
            comm.Allreduce(MPI.IN_PLACE, data, op=MPI.SUM)
            t.div_(n)
    return tensors
