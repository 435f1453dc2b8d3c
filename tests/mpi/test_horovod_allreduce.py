"""ringtrain.horovod's allreduce family against closed forms from rank and size, and against MPI_Allreduce.

Run at several world sizes:
``mpiexec -n N python -m pytest --with-mpi tests/mpi/test_horovod_allreduce.py``.
Each test computes everything collectively and asserts after its last collective.
"""
import warnings

import numpy as np
import pytest
import torch
from mpi4py import MPI

import ringtrain.horovod as hvd
from tests.helpers import all_ranks_agree

WORLD = MPI.COMM_WORLD
DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
          torch.float32, torch.float64]
OPS = {"Sum": hvd.Sum, "Average": hvd.Average, "Min": hvd.Min, "Max": hvd.Max, "Product": hvd.Product}


@pytest.fixture(autouse=True)
def _init():
    hvd.init()


def own(rank: int, count: int = 7) -> np.ndarray:
    """Rank ``rank``'s input: small whole numbers, exact in every dtype, with products that fit int8."""
    return 1 + (rank + np.arange(count)) % 2


def closed_form(op: int, n: int, count: int = 7) -> np.ndarray:
    """The reduction over ranks 0..n-1 of ``own``, in float64."""
    values = np.stack([own(r, count) for r in range(n)]).astype(np.float64)
    return {hvd.Sum: values.sum(0), hvd.Average: values.sum(0) / n, hvd.Min: values.min(0),
            hvd.Max: values.max(0), hvd.Product: values.prod(0)}[op]


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", list(OPS), ids=str)
def test_every_dtype_and_op(dtype, op):
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    x = torch.from_numpy(own(r)).to(dtype).reshape(7, 1)
    before = x.clone()
    out = hvd.allreduce(x, op=OPS[op], name=f"{dtype}-{op}")
    expected = torch.from_numpy(closed_form(OPS[op], n)).reshape(7, 1)
    if not dtype.is_floating_point and op == "Average":
        expected = torch.from_numpy(closed_form(hvd.Sum, n)).floor_divide(n).reshape(7, 1)
    ok = out.dtype == dtype and out.shape == x.shape and torch.equal(x, before)
    ok = ok and torch.allclose(out.double(), expected.to(dtype).double(), rtol=0, atol=0)
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_in_place_returns_its_input():
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    x = torch.from_numpy(own(r)).double()
    out = hvd.allreduce_(x, op=hvd.Sum)
    handle = hvd.allreduce_async_(x, op=hvd.Max)
    again = hvd.synchronize(handle)
    # After the sum every rank holds the same values, so their maximum is the sum.
    assert all_ranks_agree(out is x and again is x and np.array_equal(x.numpy(), closed_form(hvd.Sum, n)))


@pytest.mark.mpi
def test_integer_average_rounds_down():
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    x = torch.tensor([r - 2, -r - 1, 5 * r], dtype=torch.int64)
    out = hvd.allreduce(x)  # op defaults to Average
    total = np.array([sum(s - 2 for s in range(n)), sum(-s - 1 for s in range(n)), 5 * n * (n - 1) // 2])
    assert all_ranks_agree(out.tolist() == (total // n).tolist())


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", [torch.int32, torch.float16, torch.float32, torch.float64], ids=str)
def test_prescale_and_postscale(dtype):
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    pre, post = 0.3, 1.7
    x = torch.from_numpy(own(r) * 10).to(dtype)
    out = hvd.allreduce(x, op=hvd.Sum, prescale_factor=pre, postscale_factor=post)
    # Each rank scales its own contribution (integers: in float64, truncated), then the sum is scaled.
    compute = torch.float64 if not dtype.is_floating_point else torch.float32 if dtype == torch.float16 else dtype
    contributions = [(torch.tensor(pre, dtype=compute) * torch.from_numpy(own(s) * 10).to(compute)).to(dtype)
                     for s in range(n)]
    total = sum(c.to(compute) for c in contributions)
    expected = (total * torch.tensor(post, dtype=compute)).to(dtype)
    tolerance = 2.0 ** -10 * expected.double().abs().max().item() if dtype == torch.float16 else 1e-12 * 100 * n
    assert all_ranks_agree(bool(torch.allclose(out.double(), expected.double(), rtol=0, atol=tolerance)))


@pytest.mark.mpi
def test_float32_against_mpi_allreduce():
    rng = np.random.default_rng([7, WORLD.Get_rank()])
    values = rng.standard_normal(100_003).astype(np.float32)
    out = hvd.allreduce(torch.from_numpy(values), op=hvd.Sum)
    wide, magnitude = values.astype(np.float64), np.abs(values.astype(np.float64))
    WORLD.Allreduce(MPI.IN_PLACE, wide, MPI.SUM)
    WORLD.Allreduce(MPI.IN_PLACE, magnitude, MPI.SUM)
    bound = (WORLD.Get_size() + 1) * 2.0 ** -24 * magnitude  # each partial sum rounds once, and the result
    assert all_ranks_agree(bool(np.all(np.abs(out.numpy() - wide) <= bound)))


@pytest.mark.mpi
def test_grouped_mixed_dtypes_and_shapes():
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    tensors = [torch.from_numpy(own(r, 5)).float(), torch.from_numpy(own(r, 6)).long().reshape(2, 3),
               torch.tensor(float(r)), torch.zeros(0)]
    out = hvd.grouped_allreduce(tensors, op=hvd.Sum)
    in_place = [t.clone() for t in tensors]
    returned = hvd.grouped_allreduce_(in_place, op=hvd.Sum)
    ok = [o.dtype for o in out] == [t.dtype for t in tensors] and [o.shape for o in out] == [t.shape for t in tensors]
    ok = ok and np.array_equal(out[0].numpy(), closed_form(hvd.Sum, n, 5))
    ok = ok and np.array_equal(out[1].reshape(-1).numpy(), closed_form(hvd.Sum, n, 6))
    ok = ok and out[2].item() == n * (n - 1) / 2 and out[3].numel() == 0
    ok = ok and all(a is b for a, b in zip(returned, in_place))
    ok = ok and all(torch.equal(a, b) for a, b in zip(out, in_place))
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_non_contiguous_input():
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    x = torch.from_numpy(own(r, 6)).double().reshape(2, 3).t()  # a transposed view
    out = hvd.allreduce(x, op=hvd.Sum)
    ok = torch.equal(out, torch.from_numpy(closed_form(hvd.Sum, n, 6)).reshape(2, 3).t())
    try:
        hvd.allreduce_(x)
        refused = False
    except ValueError:
        refused = True
    assert all_ranks_agree(ok and refused)


@pytest.mark.mpi
@pytest.mark.parametrize("op", ["Sum", "Average"])
def test_gradient_is_the_allreduce_of_the_gradient(op):
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    y = hvd.allreduce(x, op=OPS[op])
    (y * (r + 1)).sum().backward()  # upstream gradient r + 1 on rank r
    grads = hvd.grouped_allreduce([x * 1.0, x * 2.0], op=OPS[op])
    (grads[0].sum() + grads[1].sum() * (r + 1)).backward()
    # The upstream gradient r + 1, reduced: its sum over ranks, or that divided by n.
    upstream = n * (n + 1) / 2 / (n if op == "Average" else 1)
    # First backward: upstream. Second: the gradient 1 of grads[0], reduced (n, or 1), and twice upstream.
    expected = upstream + (n if op == "Sum" else 1) + 2 * upstream
    ok = torch.allclose(x.grad, torch.full((3,), expected, dtype=torch.float64))
    assert all_ranks_agree(bool(ok))


@pytest.mark.mpi
def test_compression_object_wraps_the_reduction():
    n, r = WORLD.Get_size(), WORLD.Get_rank()

    class HalfOnTheWire:  # Horovod's interface: compress(t) -> (t, ctx), decompress(t, ctx)
        @staticmethod
        def compress(t):
            return t.half(), t.dtype

        @staticmethod
        def decompress(t, ctx):
            return t.to(ctx)

    x = torch.from_numpy(own(r)).double()
    out = hvd.allreduce(x, op=hvd.Sum, compression=HalfOnTheWire)
    outs = hvd.grouped_allreduce([x, x], op=hvd.Sum, compression=HalfOnTheWire)
    ok = out.dtype == torch.float64 and np.array_equal(out.numpy(), closed_form(hvd.Sum, n))
    ok = ok and all(o.dtype == torch.float64 and torch.equal(o, out) for o in outs)
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_arguments_refused_as_horovod_refuses_them():
    x = torch.ones(2)
    refusals = []
    for call, error in [(lambda: hvd.allreduce(x, op=hvd.Sum, average=True), ValueError),
                        (lambda: hvd.allreduce(x, op=hvd.Adasum), NotImplementedError),
                        (lambda: hvd.allreduce(x, op=17), ValueError),
                        (lambda: hvd.allreduce(torch.ones(2, dtype=torch.bool)), TypeError),
                        (lambda: hvd.allreduce([1.0, 2.0]), TypeError),
                        (lambda: hvd.allreduce(x, prescale_factor="2"), TypeError),
                        (lambda: hvd.grouped_allreduce_([x, torch.ones(2, 3).t()]), ValueError)]:
        try:
            call()
            refusals.append(False)
        except error:
            refusals.append(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summed = hvd.allreduce(x, average=False)
    ok = all(refusals) and any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert all_ranks_agree(ok and summed.tolist() == [WORLD.Get_size()] * 2)
