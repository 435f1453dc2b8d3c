"""The serial pieces of ringtrain.horovod's collectives: byte views, alltoall's split checks, the scaling rules."""
import numpy as np
import pytest
import torch

from ringtrain.horovod.alltoall import _send_counts
from ringtrain.horovod.reducescatter import _scaled
from ringtrain.horovod.submission import as_rank
from ringtrain.horovod.tensor_views import byte_view, displacements, row_bytes, word_view

DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
          torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("count", [0, 1, 3, 8])
def test_byte_and_word_views_share_the_tensors_memory(dtype, count):
    t = torch.zeros(count, dtype=dtype)
    raw = byte_view(t)
    assert raw.size == count * t.element_size()
    raw[:] = 1                                  # written through the view
    assert count == 0 or not torch.equal(t, torch.zeros(count, dtype=dtype))
    words = word_view(t)
    if raw.size and raw.size % 4 == 0:
        assert words is not None and words.nbytes == raw.size and np.shares_memory(words, raw)
    else:
        assert words is None


def test_row_bytes_and_displacements():
    assert row_bytes(torch.zeros(7, 3, 2, dtype=torch.float64)) == 48
    assert row_bytes(torch.zeros(4, dtype=torch.int16)) == 2
    assert displacements(np.array([3, 0, 2, 5])).tolist() == [0, 3, 3, 5]


@pytest.mark.parametrize("splits, message", [
    (None, "not a multiple"), ([1, 1, 1], "hold 2 non-negative"), ([2, -1], "non-negative"), ([3, 3], "more than"),
    (torch.ones(2), "integers"), ([1.5, 0.5], "non-negative integers"), ("ab", "non-negative integers")])
def test_alltoall_refuses_splits_that_do_not_fit(splits, message):
    counts, problem = _send_counts(torch.zeros(5, 2), splits, 2)
    assert counts is None and message in problem and "alltoall" in problem


def test_alltoall_counts_from_splits():
    assert _send_counts(torch.zeros(6), None, 3)[0].tolist() == [2, 2, 2]
    assert _send_counts(torch.zeros(6), torch.tensor([0, 4], dtype=torch.int32), 2)[0].tolist() == [0, 4]
    assert _send_counts(torch.zeros(6), [np.int64(1), 2], 2)[0].tolist() == [1, 2]


def test_scaling_follows_horovods_arithmetic_per_dtype():
    # Integers: float64, truncated toward zero; 16-bit floats: float32, rounded once; others in their own type.
    assert _scaled(torch.tensor([3, -3, 7]), 0.5).tolist() == [1, -1, 3]
    half = torch.tensor([1.0, 3.0], dtype=torch.float16)
    assert torch.equal(_scaled(half.clone(), 0.1), (half.float() * 0.1).half())
    assert torch.equal(_scaled(torch.tensor([1 + 2j]), 2.0), torch.tensor([2 + 4j]))
    same = torch.ones(2)
    assert _scaled(same, 1) is same


def test_as_rank_takes_integers_only():
    assert (as_rank(3), as_rank(np.int32(2)), as_rank(True), as_rank(1.0), as_rank("0")) == (3, 2, None, None, None)
