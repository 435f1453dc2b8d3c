"""What the collectives accept, what they reject and why, and the 16-bit conversions."""
import numpy as np
import pytest
import torch
from mpi4py import MPI

import ringtrain
from ringtrain.collectives.buffers import as_flat, narrow, widen


def test_numpy_and_torch_views_share_memory():
    x = np.zeros((2, 3), np.float32)
    data, dtype = as_flat(x)
    data[4] = 7
    assert x[1, 1] == 7 and dtype == "float32"
    t = torch.zeros(2, 3, dtype=torch.bfloat16)
    data, dtype = as_flat(t)
    assert dtype == "bfloat16" and data.dtype == np.uint16
    data[0] = 0x3F80  # 1.0 in bfloat16
    assert t[0, 0].item() == 1.0


@pytest.mark.parametrize("x, error, words", [
    (np.zeros(4, np.float32)[::2], ValueError, "not C-contiguous"),
    (np.zeros(4, np.complex64), TypeError, "complex64 is not supported"),
    (np.zeros(4, np.dtype(">f4")), TypeError, "native byte order"),
    (np.zeros(4, np.uint8), TypeError, "uint8 is not supported"),
    ([1.0, 2.0], TypeError, "expected a numpy array or a CPU torch tensor, got list"),
    (torch.zeros(4, 4).t(), ValueError, "not contiguous"),
    (torch.zeros(4, dtype=torch.complex64), TypeError, "torch.complex64 is not supported"),
    (torch.zeros(4, device="meta"), ValueError, "on device 'meta'"),
])
def test_bad_buffers_get_a_clear_error(x, error, words):
    with pytest.raises(error, match=words):
        ringtrain.allreduce(x, comm=MPI.COMM_SELF)


def test_read_only_array_is_rejected():
    x = np.zeros(4)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        ringtrain.allreduce(x, comm=MPI.COMM_SELF)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"op": "max"}, ValueError, "op='max' is not supported"),
    ({"algorithm": "tree"}, ValueError, "algorithm='tree' is not supported"),
])
def test_bad_options_get_a_clear_error(kwargs, error, words):
    with pytest.raises(error, match=words):
        ringtrain.allreduce(np.zeros(3), comm=MPI.COMM_SELF, **kwargs)


def test_mean_of_integers_is_refused():
    with pytest.raises(TypeError, match="mean' needs a floating dtype, got int32"):
        ringtrain.allreduce(np.zeros(3, np.int32), op="mean", comm=MPI.COMM_SELF)


def test_broadcast_root_must_be_a_rank():
    with pytest.raises(ValueError, match=r"root=1 is not a rank of this communicator \(0..0\)"):
        ringtrain.broadcast(np.zeros(3), root=1, comm=MPI.COMM_SELF)


def test_bfloat16_round_trip_matches_torch():
    # Every bit pattern: all finite values, infinities and NaNs.
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    t = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
    wide = widen(bits, "bfloat16", np.empty(bits.size, np.float32))
    assert np.array_equal(wide, t.float().numpy(), equal_nan=True)


def test_float32_to_bfloat16_rounds_like_torch():
    rng = np.random.default_rng(0)
    # Random bit patterns cover ties, subnormals, infinities and NaNs.
    f = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    out = np.empty(f.size, np.uint16)
    narrow(f.copy(), "bfloat16", out)
    expected = torch.from_numpy(f.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(f)
    assert np.array_equal(out[~nan], expected[~nan])
    # NaN payloads may differ, but a NaN must stay a NaN.
    assert np.isnan(torch.from_numpy(out.view(np.int16)).view(torch.bfloat16).float().numpy()[nan]).all()


def test_single_rank_is_the_identity():
    x = np.arange(5.0)
    assert ringtrain.allreduce(x, op="mean", comm=MPI.COMM_SELF) is x
    assert np.array_equal(x, np.arange(5.0))
