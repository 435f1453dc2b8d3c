"""hvd.alltoall: blocks of rows exchanged between every pair of ranks, against closed forms from rank and size.

Rank r sends rank j ``splits(r, j)`` rows whose entries name the pair (``100 * r + j``); so rank r must
receive, in rank order, ``splits(i, r)`` rows naming ``(i, r)`` from each rank i.
Run at 1-4 ranks: ``mpiexec -n N python -m pytest --with-mpi tests/mpi/test_horovod_alltoall.py``.
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


def splits(sender: int, receiver: int) -> int:
    return (sender + 2 * receiver) % 3   # zeros included


def sent_by(sender: int, n: int, dtype, extra: int = 0) -> torch.Tensor:
    """What ``sender`` passes: its blocks for ranks 0..n-1 in order, then ``extra`` rows sent to nobody."""
    pairs = [100 * sender + j for j in range(n) for _ in range(splits(sender, j))] + [-1] * extra
    return coded(pairs, 2, dtype)


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_splits_exchange_blocks_and_report_received_splits(dtype):
    r, n = hvd.rank(), hvd.size()
    mine = sent_by(r, n, dtype, extra=r)          # sum(splits) may be below the first dimension
    mine_splits = torch.tensor([splits(r, j) for j in range(n)], dtype=torch.int32)
    got, got_splits = hvd.alltoall(mine, splits=mine_splits)
    got_list, list_splits = hvd.alltoall(mine, splits=mine_splits.tolist())
    expected = coded([100 * i + r for i in range(n) for _ in range(splits(i, r))], 2, dtype)
    expected_splits = torch.tensor([splits(i, r) for i in range(n)], dtype=torch.int32)
    ok = torch.equal(got, expected) and torch.equal(got_splits, expected_splits) and torch.equal(got_list, expected)
    assert all_ranks_agree(ok and torch.equal(list_splits, expected_splits))


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", [torch.bool, torch.float16, torch.int64, torch.complex128], ids=str)
def test_equal_splits_by_default(dtype):
    r, n = hvd.rank(), hvd.size()
    mine = coded([100 * r + j for j in range(n) for _ in range(3)], 4, dtype).reshape(3 * n, 2, 2)
    got = hvd.alltoall(mine)
    out, got_splits = engine.synchronize(hvd.alltoall_async(mine))   # the async form always gives the pair
    expected = coded([100 * i + r for i in range(n) for _ in range(3)], 4, dtype).reshape(3 * n, 2, 2)
    ok = torch.equal(got, expected) and torch.equal(out, expected)
    assert all_ranks_agree(ok and got_splits.tolist() == [3] * n and got_splits.dtype == torch.int32)


@pytest.mark.mpi
def test_splits_tensor_dtype_is_kept_and_non_contiguous_input_works():
    r, n = hvd.rank(), hvd.size()
    wide = sent_by(r, n, torch.float64, extra=2)
    strided = torch.stack([wide, -wide], dim=2).reshape(-1, 4)[:, ::2]   # equals wide, not contiguous
    got, got_splits = hvd.alltoall(strided, torch.tensor([splits(r, j) for j in range(n)]))
    expected = coded([100 * i + r for i in range(n) for _ in range(splits(i, r))], 2, torch.float64)
    ok = not strided.is_contiguous() and torch.equal(got, expected)
    assert all_ranks_agree(ok and got_splits.dtype == torch.int64)


@pytest.mark.mpi
def test_gradient_returns_to_its_sender():
    # alltoall permutes rows across ranks; its gradient brings each row's gradient back where the row came from.
    r, n = hvd.rank(), hvd.size()
    x = sent_by(r, n, torch.float64, extra=2).requires_grad_()     # the last 2 rows are sent nowhere
    y, _ = hvd.alltoall(x, splits=[splits(r, j) for j in range(n)])
    (y * y.detach()).sum().backward()              # d/dy = y, i.e. the rows' own values
    expected = torch.cat([x.detach()[:-2], torch.zeros(2, 2, dtype=torch.float64)])
    assert all_ranks_agree(torch.equal(x.grad, expected))


@pytest.mark.mpi
def test_equal_split_gradient():
    r, n = hvd.rank(), hvd.size()
    x = torch.arange(2.0 * n).requires_grad_()
    (hvd.alltoall(x) * (r + 1)).sum().backward()
    expected = torch.tensor([j + 1.0 for j in range(n) for _ in range(2)])   # the receiver's weight
    assert all_ranks_agree(torch.equal(x.grad, expected))


@pytest.mark.mpi
@pytest.mark.parametrize("case", ["not_a_multiple", "too_many_rows", "float_splits", "wrong_length", "negative",
                                  "scalar"])
def test_bad_splits_are_refused_on_every_rank(case):
    n = hvd.size()
    tensor, given = torch.ones(2 * n), None
    if case == "not_a_multiple":
        tensor = torch.ones(2 * n + 1) if n > 1 else None
    elif case == "too_many_rows":
        given = [3] * n
    elif case == "float_splits":
        given = torch.ones(n)
    elif case == "wrong_length":
        given = [1] * (n + 1)
    elif case == "negative":
        given = [-1] + [1] * (n - 1)
    else:
        tensor = torch.tensor(1.0)
    if tensor is None:
        pytest.skip("every length is a multiple of one rank")
    error = raised(lambda: hvd.alltoall(tensor, splits=given))
    assert all_ranks_agree(isinstance(error, ValueError) and "alltoall" in str(error))


@pytest.mark.mpi(min_size=2)
def test_one_rank_with_bad_splits_fails_every_rank():
    r, n = hvd.rank(), hvd.size()
    error = raised(lambda: hvd.alltoall(torch.ones(n), splits=[2] * n if r == 1 else [1] * n))
    assert all_ranks_agree(isinstance(error, ValueError if r == 1 else RuntimeError) and "splits" in str(error))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("case", ["dtype", "shape"])
def test_mismatch_raises_runtime_error_on_every_rank(case):
    r, n = hvd.rank(), hvd.size()
    t = torch.ones(n, 2, dtype=torch.int32 if case == "dtype" and r % 2 else torch.float32)
    if case == "shape":
        t = torch.ones(n, 2 + r)
    error = raised(lambda: hvd.alltoall(t))
    assert all_ranks_agree(isinstance(error, RuntimeError))
