"""The engine's agreement pieces and Horovod's scaling rules, on one process (no mpiexec needed)."""
import os
import subprocess
import sys

import pytest
import torch
from mpi4py import MPI

import ringtrain.horovod as hvd
from ringtrain.horovod.agreement import agree, chain, mismatch_message, signature
from ringtrain.horovod.reduction import neutral, reduce_, scale_


def test_signature_differs_in_every_field_and_not_across_processes():
    base = signature("allreduce", "w", {"dtypes": ["float32"], "shapes": [(3,)], "op": "Sum"})
    variants = [signature("allgather", "w", {"dtypes": ["float32"], "shapes": [(3,)], "op": "Sum"}),
                signature("allreduce", "v", {"dtypes": ["float32"], "shapes": [(3,)], "op": "Sum"}),
                signature("allreduce", None, {"dtypes": ["float32"], "shapes": [(3,)], "op": "Sum"}),
                signature("allreduce", "w", {"dtypes": ["float64"], "shapes": [(3,)], "op": "Sum"}),
                signature("allreduce", "w", {"dtypes": ["float32"], "shapes": [(3, 1)], "op": "Sum"}),
                signature("allreduce", "w", {"dtypes": ["float32"], "shapes": [(3,)], "op": "Max"})]
    assert len({base, *variants}) == 7 and all(0 <= s < 2**62 for s in (base, *variants))
    # Another process, with another string-hash salt, computes the same signature: ranks can compare them.
    code = ("from ringtrain.horovod.agreement import signature; "
            "print(signature('allreduce', 'w', {'dtypes': ['float32'], 'shapes': [(3,)], 'op': 'Sum'}))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert int(other.stdout) == base
    # Dicts and sets count by content, not by the order they were built in.
    assert signature("k", None, {"a": 1, "b": {2, 3}}) == signature("k", None, {"b": {3, 2}, "a": 1})


def test_mismatch_message_names_only_what_differs_with_each_ranks_value():
    described = [("allreduce", "grad.w", {"dtypes": ["float32"], "shapes": [(3,)]}),
                 ("allreduce", "grad.w", {"dtypes": ["float32"], "shapes": [(4,)]}),
                 None,  # a rank inside join has no operation
                 ("allreduce", "grad.w", {"dtypes": ["float32"], "shapes": [(3,)]})]
    message = mismatch_message("allreduce", "grad.w", described)
    assert message == ("allreduce 'grad.w': ranks submitted different operations: "
                       "shapes (ranks 0,3: [(3,)]; rank 1: [(4,)])")
    assert "\n" not in message


def test_agreement_on_one_rank():
    assert agree(MPI.COMM_SELF, chain([123, 456]), False) == (2, True, True, -1, 0)
    alone_joined = agree(MPI.COMM_SELF, None, True)
    assert not alone_joined.any_active and alone_joined.agreed and alone_joined.joining == 0


@pytest.mark.parametrize("dtype,factor,values,expected", [
    (torch.int32, 0.5, [-7, 7, 3], [-3, 3, 1]),  # integers scale in float64 and truncate toward zero
    (torch.int64, 1.9, [2, -2], [3, -3]),
    (torch.float16, 0.1, [1000.0], [float(torch.tensor(100.0, dtype=torch.float16))]),  # in float32, rounded once
    (torch.float64, 0.25, [1.0, -2.0], [0.25, -0.5])])
def test_scaling_follows_horovod(dtype, factor, values, expected):
    t = torch.tensor(values, dtype=dtype)
    scale_(t, factor)
    assert t.dtype == dtype and t.tolist() == expected


@pytest.mark.parametrize("op", [hvd.Sum, hvd.Average, hvd.Min, hvd.Max, hvd.Product])
@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.float16, torch.float32])
def test_neutral_leaves_the_other_values(op, dtype):
    x = torch.tensor([-3, 0, 5], dtype=dtype)
    together = torch.stack([x, neutral((3,), dtype, op)]).double()
    reduced = {hvd.Sum: together.sum(0), hvd.Average: together.sum(0), hvd.Min: together.min(0).values,
               hvd.Max: together.max(0).values, hvd.Product: together.prod(0)}[op]
    assert reduced.tolist() == x.double().tolist()


def test_reduce_on_one_rank_applies_both_factors():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])
    reduce_(MPI.COMM_SELF, [a, b], hvd.Average, prescale=2.0, postscale=0.5)
    assert a.tolist() == [1.0, 2.0] and b.tolist() == [[3.0]]
