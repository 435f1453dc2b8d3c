"""hvd.allgather and grouped_allgather: rows concatenated in rank order, against closed forms from rank and size.

Run at 1-4 ranks: ``mpiexec -n N python -m pytest --with-mpi tests/mpi/test_horovod_gather.py``. Every
rank computes the whole expected concatenation itself and asserts only after the last collective.
"""
import pytest
import torch
from mpi4py import MPI

import ringtrain.horovod as hvd
from ringtrain.horovod import engine
from tests.helpers import all_ranks_agree
from tests.mpi.horovod_ops_helpers import DTYPES, coded, raised

WORLD = MPI.COMM_WORLD


@pytest.fixture(autouse=True)
def _init():
    hvd.init()


def rows_of(rank: int, skew: bool) -> int:
    """Rank ``rank``'s first dimension: r+1 rows, or (skew) 0 on rank 0 and 2r+1 elsewhere."""
    return (0 if rank == 0 else 2 * rank + 1) if skew else rank + 1


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("skew", [False, True])
def test_variable_first_dimensions_concatenate_in_rank_order(dtype, skew):
    r, n = hvd.rank(), hvd.size()
    mine = coded([r] * rows_of(r, skew), 3, dtype)
    got = hvd.allgather(mine)
    expected = torch.cat([coded([i] * rows_of(i, skew), 3, dtype) for i in range(n)])
    assert all_ranks_agree(got.dtype == dtype and torch.equal(got, expected))


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows, cols", [(4, 5), (1, 3), (2, 1)])
def test_equal_first_dimensions_every_dtype(dtype, rows, cols):
    # Equal byte counts go by ringtrain's ring allgather where they are whole words, by Allgatherv otherwise.
    r, n = hvd.rank(), hvd.size()
    got = hvd.allgather(coded(list(range(r, r + rows)), cols, dtype))
    expected = torch.cat([coded(list(range(i, i + rows)), cols, dtype) for i in range(n)])
    assert all_ranks_agree(torch.equal(got, expected))


@pytest.mark.mpi
def test_non_contiguous_input_and_large_rows():
    r, n = hvd.rank(), hvd.size()
    wide = coded([r] * 300_000, 2, torch.float32)          # 2.4 MB per rank: the ring's segmented path
    transposed = coded(list(range(5)), 3 + r % 2, torch.float64).t()     # (3 or 4, 5), not contiguous
    strided = coded(list(range(4)), 6, torch.int64)[:, ::2]              # every other column
    got_wide, got_t, got_s = hvd.allgather(wide), hvd.allgather(transposed), hvd.allgather(strided)
    ok = torch.equal(got_wide, torch.cat([coded([i] * 300_000, 2, torch.float32) for i in range(n)]))
    ok &= torch.equal(got_t, torch.cat([coded(list(range(5)), 3 + i % 2, torch.float64).t() for i in range(n)]))
    ok &= torch.equal(got_s, torch.cat([strided] * n))
    assert all_ranks_agree(bool(ok) and not transposed.is_contiguous())


@pytest.mark.mpi
def test_grouped_allgather_mixes_dtypes_and_shapes():
    r, n = hvd.rank(), hvd.size()
    inputs = [coded([r] * (r + 1), 2, torch.int16), coded([r], 1, torch.bfloat16).reshape(1),
              coded([r] * 2, 4, torch.complex64).reshape(2, 2, 2)]
    got = hvd.grouped_allgather(inputs)
    got_async = engine.synchronize(hvd.grouped_allgather_async(inputs))
    expected = [torch.cat([coded([i] * (i + 1), 2, torch.int16) for i in range(n)]),
                torch.cat([coded([i], 1, torch.bfloat16).reshape(1) for i in range(n)]),
                torch.cat([coded([i] * 2, 4, torch.complex64).reshape(2, 2, 2) for i in range(n)])]
    ok = all(torch.equal(a, b) and torch.equal(c, b) for a, c, b in zip(got, got_async, expected))
    assert all_ranks_agree(ok and len(got) == 3 and hvd.grouped_allgather([]) == [])


@pytest.mark.mpi
def test_allgather_async_keeps_submission_order():
    r, n = hvd.rank(), hvd.size()
    handles = [hvd.allgather_async(torch.full((r + 1,), 10 * k + r)) for k in range(5)]
    results = [engine.synchronize(h) for h in reversed(handles)][::-1]
    expected = [torch.cat([torch.full((i + 1,), 10 * k + i) for i in range(n)]) for k in range(5)]
    assert all_ranks_agree(all(torch.equal(a, b) for a, b in zip(results, expected)))


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_gradient_is_the_average_narrowed_to_own_rows(dtype):
    # Horovod's backward: the incoming gradient averaged over ranks, then this rank's rows.
    r, n = hvd.rank(), hvd.size()
    x = torch.zeros(r + 2, 3, dtype=dtype, requires_grad=True)
    y = hvd.allgather(x)
    grad_out = torch.arange(y.numel(), dtype=dtype).reshape(y.shape) * (r + 1)   # rank-dependent
    y.backward(grad_out)
    start = sum(i + 2 for i in range(r))
    expected = (torch.arange(y.numel(), dtype=torch.float64).reshape(y.shape) * (n + 1) / 2)[start:start + r + 2]
    assert all_ranks_agree(torch.equal(x.grad, expected.to(dtype)))


@pytest.mark.mpi
def test_grouped_gradient():
    r, n = hvd.rank(), hvd.size()
    xs = [torch.zeros(r + 1, dtype=torch.float64, requires_grad=True), torch.zeros(1, 2, requires_grad=True)]
    ys = hvd.grouped_allgather(xs)
    (ys[0].sum() * (r + 1) + ys[1].sum()).backward()
    ok = torch.equal(xs[0].grad, torch.full((r + 1,), (n + 1) / 2, dtype=torch.float64))
    assert all_ranks_agree(ok and torch.equal(xs[1].grad, torch.ones(1, 2)))


@pytest.mark.mpi
def test_scalar_is_refused_on_every_rank():
    error = raised(lambda: hvd.allgather(torch.tensor(1.0)))
    assert all_ranks_agree(isinstance(error, ValueError) and "scalar" in str(error))


@pytest.mark.mpi
def test_one_rank_refusing_fails_every_rank():
    r = hvd.rank()
    error = raised(lambda: hvd.allgather(torch.tensor(1.0) if r == 0 else torch.ones(1)))
    expected = ValueError if r == 0 or hvd.size() == 1 else RuntimeError
    assert all_ranks_agree(isinstance(error, expected) and "scalar" in str(error))
    after = hvd.allgather(torch.ones(1))   # nothing is left half-done
    assert all_ranks_agree(after.shape == (hvd.size(),))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("case", ["dtype", "shape"])
def test_mismatch_raises_runtime_error_on_every_rank(case):
    r = hvd.rank()
    if case == "dtype":
        t = torch.ones(2, 3, dtype=torch.int32 if r % 2 else torch.float32)
    else:
        t = torch.ones(2, 3 + r)
    error = raised(lambda: hvd.allgather(t))
    assert all_ranks_agree(isinstance(error, RuntimeError))
