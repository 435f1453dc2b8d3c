"""hvd.reducescatter and grouped_reducescatter against closed forms from rank and size.

Rank r contributes ``(r + 1) * base`` where ``base`` holds small integers, so the sum over n ranks is
``n (n + 1) / 2 * base``, exact in every dtype, and the average ``(n + 1) / 2 * base``. Rank r keeps rows
``[lo, hi)`` of Horovod's split: ``N // n`` rows each, one more on the first ``N % n`` ranks.
Run at 1-4 ranks: ``mpiexec -n N python -m pytest --with-mpi tests/mpi/test_horovod_reducescatter.py``.
"""
import pytest
import torch
from mpi4py import MPI

import ringtrain.horovod as hvd
from ringtrain.horovod import engine
from tests.helpers import all_ranks_agree
from tests.mpi.horovod_ops_helpers import raised

WORLD = MPI.COMM_WORLD
SUMMED = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
          torch.float32, torch.float64, torch.complex64]


@pytest.fixture(autouse=True)
def _init():
    hvd.init()


def block(rows: int, n: int, r: int) -> tuple[int, int]:
    """Horovod's rows for rank r, written out independently of the code under test."""
    sizes = [rows // n + (1 if i < rows % n else 0) for i in range(n)]
    return sum(sizes[:r]), sum(sizes[:r + 1])


def base(rows: int, cols: int, dtype) -> torch.Tensor:
    # Entries in 0..4: the sum over 4 ranks (10x) stays below int8's and uint8's limits.
    return ((torch.arange(rows * cols) % 5).reshape(rows, cols)).to(dtype)


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", SUMMED, ids=str)
@pytest.mark.parametrize("rows", ["n", "2n+1", "n-1", "3n+2"])
def test_sum_keeps_horovods_block_of_rows(dtype, rows):
    r, n = hvd.rank(), hvd.size()
    rows = {"n": n, "2n+1": 2 * n + 1, "n-1": n - 1, "3n+2": 3 * n + 2}[rows]
    got = hvd.reducescatter(base(rows, 3, dtype) * (r + 1), op=hvd.Sum)
    lo, hi = block(rows, n, r)
    expected = (base(rows, 3, torch.int64) * (n * (n + 1) // 2))[lo:hi].to(dtype)
    assert all_ranks_agree(got.dtype == dtype and torch.equal(got, expected))


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
                                   torch.int32, torch.int64], ids=str)
def test_average_is_the_default_op(dtype):
    r, n = hvd.rank(), hvd.size()
    rows = 2 * n + 1
    got = hvd.reducescatter(base(rows, 2, dtype) * (r + 1))
    lo, hi = block(rows, n, r)
    exact = base(rows, 2, torch.float64)[lo:hi] * (n + 1) / 2
    expected = exact.trunc().to(dtype) if not (dtype.is_floating_point or dtype.is_complex) else exact.to(dtype)
    assert all_ranks_agree(torch.equal(got, expected))


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", [torch.int32, torch.float16, torch.float32], ids=str)
def test_prescale_and_postscale(dtype):
    r, n = hvd.rank(), hvd.size()
    rows = 4 * n
    x = base(rows, 2, dtype) * 4 * (r + 1)                  # multiples of 4: exact after the 0.25 and 0.5 below
    pre = hvd.reducescatter(x, op=hvd.Sum, prescale_factor=0.25)
    post = hvd.reducescatter(x, op=hvd.Average, postscale_factor=0.5)
    lo, hi = block(rows, n, r)
    b = base(rows, 2, torch.float64)[lo:hi]
    ok = torch.equal(pre, (b * n * (n + 1) / 2).to(dtype))
    assert all_ranks_agree(ok and torch.equal(post, (b * (n + 1)).to(dtype)))


@pytest.mark.mpi
def test_integer_prescale_truncates_each_input_as_horovod_does():
    r, n = hvd.rank(), hvd.size()
    got = hvd.reducescatter(torch.full((n, 1), 3, dtype=torch.int64), op=hvd.Sum, prescale_factor=0.5)
    assert all_ranks_agree(torch.equal(got, torch.full((1, 1), n, dtype=torch.int64)))   # trunc(1.5) = 1 per rank


@pytest.mark.mpi
def test_grouped_and_async_forms():
    r, n = hvd.rank(), hvd.size()
    xs = [base(n + 1, 1, torch.float32) * (r + 1), base(2 * n, 3, torch.int16).reshape(2 * n, 3, 1) * (r + 1)]
    grouped = hvd.grouped_reducescatter(xs, op=hvd.Sum)
    handle = hvd.grouped_reducescatter_async(xs, op=hvd.Sum)
    single = engine.synchronize(hvd.reducescatter_async(xs[0], op=hvd.Sum))
    later = engine.synchronize(handle)
    expected = []
    for x in (base(n + 1, 1, torch.int64), base(2 * n, 3, torch.int64).reshape(2 * n, 3, 1)):
        lo, hi = block(x.shape[0], n, r)
        expected.append(x[lo:hi] * (n * (n + 1) // 2))
    ok = all(torch.equal(g, e.to(g.dtype)) and torch.equal(l, g) for g, l, e in zip(grouped, later, expected))
    untouched = torch.equal(xs[0], base(n + 1, 1, torch.float32) * (r + 1))
    assert all_ranks_agree(ok and untouched and torch.equal(single, grouped[0]))


@pytest.mark.mpi
@pytest.mark.parametrize("op", ["Sum", "Average"])
def test_gradient_is_horovods_allgather_of_the_gradient(op):
    # Horovod's backward: the incoming gradients gathered in rank order, times n for Sum.
    r, n = hvd.rank(), hvd.size()
    rows = 2 * n + 1
    x = torch.zeros(rows, 2, dtype=torch.float64, requires_grad=True)
    y = hvd.reducescatter(x, op=getattr(hvd, op))
    y.backward(torch.full(y.shape, float(r + 1), dtype=torch.float64))
    owner = torch.tensor([next(i for i in range(n) if block(rows, n, i)[0] <= row < block(rows, n, i)[1])
                          for row in range(rows)], dtype=torch.float64)
    expected = ((owner + 1) * (n if op == "Sum" else 1)).reshape(rows, 1).expand(rows, 2)
    assert all_ranks_agree(torch.equal(x.grad, expected))


@pytest.mark.mpi
@pytest.mark.parametrize("op, error", [("Adasum", NotImplementedError), ("Min", NotImplementedError),
                                       ("Max", NotImplementedError), ("Product", NotImplementedError),
                                       (17, ValueError)])
def test_unsupported_op_is_refused_on_every_rank(op, error):
    op = getattr(hvd, op) if isinstance(op, str) else op
    caught = raised(lambda: hvd.reducescatter(torch.ones(4), op=op))
    assert all_ranks_agree(isinstance(caught, error) and "op=" in str(caught))


@pytest.mark.mpi
@pytest.mark.parametrize("tensor", ["scalar", "bool"])
def test_bad_tensor_is_refused_on_every_rank(tensor):
    t = torch.tensor(1.0) if tensor == "scalar" else torch.ones(4, dtype=torch.bool)
    caught = raised(lambda: hvd.grouped_reducescatter([torch.ones(3, 1), t]))
    assert all_ranks_agree(isinstance(caught, ValueError) and "tensors[1]" in str(caught))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("case", ["shape", "dtype", "op"])
def test_disagreement_raises_runtime_error_on_every_rank(case):
    r = hvd.rank()
    t = torch.ones(4, 2 + (r if case == "shape" else 0), dtype=torch.int32 if case == "dtype" and r else torch.float32)
    caught = raised(lambda: hvd.reducescatter(t, op=hvd.Sum if case == "op" and r else hvd.Average))
    assert all_ranks_agree(isinstance(caught, RuntimeError))
