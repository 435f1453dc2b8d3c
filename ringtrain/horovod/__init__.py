"""Horovod's ``horovod.torch`` API on ringtrain: a Horovod script runs with one changed import.

    import ringtrain.horovod as hvd      # was: import horovod.torch as hvd
    hvd.init()
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)

Launched as Horovod's MPI mode is: ``mpirun -n 4 python train.py`` or ``srun``
(or ``python -m ringtrain.horovod.run``, which maps horovodrun's flags onto
mpiexec). The collectives are ringtrain's, over MPI; names, shapes, dtypes and
ops that differ across ranks raise on every rank instead of stalling.
"""
from .basics import (Adasum, Average, Max, Min, Product, Sum, ccl_built, cross_rank, cross_size, cuda_built,
                     ddl_built, gloo_built, gloo_enabled, init, is_homogeneous, is_initialized, local_rank,
                     local_size, mpi_built, mpi_enabled, mpi_threads_supported, nccl_built, rank, rocm_built,
                     shutdown, size)
from .compression import Compression, Compressor, FP16Compressor, NoneCompressor
from .optimizer import DistributedOptimizer
from .broadcast_state import broadcast_optimizer_state, broadcast_parameters
from .sync_batch_norm import SyncBatchNorm
from .allreduce import (allreduce, allreduce_, allreduce_async, allreduce_async_, grouped_allreduce,
                        grouped_allreduce_, grouped_allreduce_async, grouped_allreduce_async_)
from .control import barrier, join
from .engine import HorovodInternalError, HorovodMismatchError, poll, synchronize
from .process_sets import ProcessSet, add_process_set, global_process_set, remove_process_set
from .allgather import allgather, allgather_async, grouped_allgather, grouped_allgather_async
from .alltoall import alltoall, alltoall_async
from .broadcast import broadcast, broadcast_, broadcast_async, broadcast_async_
from .objects import allgather_object, broadcast_object
from .reducescatter import (grouped_reducescatter, grouped_reducescatter_async, reducescatter,
                            reducescatter_async)
