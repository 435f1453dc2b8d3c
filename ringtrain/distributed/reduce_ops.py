"""torch's reduce ops on MPI: which path each (op, dtype) takes, and the refusals.

SUM, AVG and PREMUL_SUM of floating tensors, and SUM of int32/int64, go
through ringtrain's own allreduce (ring, recursive doubling or the node-aware
ring by size; 16-bit floats summed in float32). Everything else is MPI's own
reduction on the tensor's bytes: MIN, MAX, PRODUCT and the bitwise ops, and
every integer, bool and complex dtype. 16-bit floats are widened to float32
for MIN, MAX and PRODUCT, which MPI cannot apply to them, and rounded once.
bool is reduced as bytes of 0 and 1, so SUM and MAX are "any" and PRODUCT and
MIN "all", as NCCL and gloo treat it.

>>> import torch
>>> plan(dist.ReduceOp.AVG, torch.float32).ringtrain, plan(dist.ReduceOp.MAX, torch.bfloat16).widen
('mean', True)
"""
from dataclasses import dataclass

import torch
import torch.distributed as dist
from mpi4py import MPI

R = dist.ReduceOp.RedOpType
_RINGTRAIN_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_RINGTRAIN_INTEGERS = (torch.int32, torch.int64)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_COMPLEX = (torch.complex64, torch.complex128)
_MPI_OPS = {R.SUM: MPI.SUM, R.PRODUCT: MPI.PROD, R.MIN: MPI.MIN, R.MAX: MPI.MAX,
            R.BAND: MPI.BAND, R.BOR: MPI.BOR, R.BXOR: MPI.BXOR}
_BOOL_OPS = {R.SUM: MPI.MAX, R.MAX: MPI.MAX, R.PRODUCT: MPI.MIN, R.MIN: MPI.MIN,
             R.BAND: MPI.BAND, R.BOR: MPI.BOR, R.BXOR: MPI.BXOR}


@dataclass(frozen=True)
class Plan:
    ringtrain: str | None = None
    """"sum" or "mean": ringtrain's allreduce takes it; None: MPI's own reduction."""
    mpi_op: MPI.Op | None = None
    premul: float | None = None
    """PREMUL_SUM's factor, applied to the input before the sum."""
    widen: bool = False
    """16-bit floats reduced by MPI in float32."""
    divide: bool = False
    """AVG that MPI sums: divide by the group's size afterwards (complex)."""


def plan(op: dist.ReduceOp, dtype: torch.dtype) -> Plan:
    """How ``op`` reduces tensors of ``dtype``; raises ValueError naming what is allowed."""
    kind = getattr(op, "op", op)  # a ReduceOp (with PREMUL_SUM's factor) or its bare RedOpType
    if kind == R.PREMUL_SUM:
        factor = op.factor
        if isinstance(factor, torch.Tensor):
            factor = factor.item()
        if dtype not in _FLOATS + _COMPLEX:
            raise ValueError(f"ringtrain backend: PREMUL_SUM needs a floating or complex tensor, got {dtype}")
        return Plan(ringtrain="sum", premul=float(factor)) if dtype in _RINGTRAIN_DTYPES else \
            Plan(mpi_op=MPI.SUM, premul=float(factor))
    if kind in (R.SUM, R.AVG) and (dtype in _RINGTRAIN_DTYPES or (kind == R.SUM and dtype in _RINGTRAIN_INTEGERS)):
        return Plan(ringtrain="sum" if kind == R.SUM else "mean")
    if kind == R.AVG:
        if dtype in _COMPLEX:
            return Plan(mpi_op=MPI.SUM, divide=True)
        raise ValueError(f"ringtrain backend: AVG needs a floating or complex tensor, got {dtype}; "
                         "use SUM and divide as you need")
    if dtype == torch.bool:
        if kind not in _BOOL_OPS:
            raise ValueError(f"ringtrain backend: {kind.name} is not defined for bool tensors")
        return Plan(mpi_op=_BOOL_OPS[kind])
    if kind in (R.BAND, R.BOR, R.BXOR) and (dtype in _FLOATS or dtype in _COMPLEX):
        raise ValueError(f"ringtrain backend: {kind.name} needs an integer or bool tensor, got {dtype}")
    if kind in (R.MIN, R.MAX) and dtype in _COMPLEX:
        raise ValueError(f"ringtrain backend: {kind.name} is not defined for complex tensors ({dtype})")
    if kind not in _MPI_OPS:
        raise ValueError(f"ringtrain backend: reduce op {kind} is not supported; use SUM, AVG, PREMUL_SUM, MIN, "
                         "MAX, PRODUCT, BAND, BOR or BXOR")
    return Plan(mpi_op=_MPI_OPS[kind], widen=dtype in (torch.float16, torch.bfloat16))
