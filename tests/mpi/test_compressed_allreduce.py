"""Compressed allreduce at several world sizes: the mean of every rank's decompressed contribution."""
import numpy as np
import pytest
from mpi4py import MPI

from ringtrain import compression
from ringtrain.compression import Cast16, Compressor, Int8, OneBit, PowerSGD, TopK
from tests.helpers import all_ranks_agree, identical_across_ranks

WORLD = MPI.COMM_WORLD


def my_input(count=20_011, seed=3):
    return np.random.default_rng([seed, WORLD.Get_rank()]).standard_normal(count).astype(np.float32)


def everyone(x: np.ndarray) -> np.ndarray:
    out = np.empty((WORLD.Get_size(), x.size), dtype=x.dtype)
    WORLD.Allgather(x, out)
    return out


@pytest.mark.mpi
@pytest.mark.parametrize("make", [Compressor, lambda: TopK(ratio=0.05), OneBit,
                                  lambda: compression.get("int8+lz4"), lambda: compression.get("topk:k=100+lz4")],
                         ids=["none", "topk", "onebit", "int8+lz4", "topk+lz4"])
def test_gathered_schemes_equal_the_mean_of_decompressed_contributions(make):
    n = WORLD.Get_size()
    x = my_input()
    got = make().allreduce_mean(x, WORLD)
    # The reference, apart from the code under test: this rank's contribution alone (a fresh compressor's
    # round trip), every rank's gathered by MPI's own Allgather and averaged in float64.
    c = make()
    rows = everyone(c.decompress(*c.compress(x))).astype(np.float64)
    exact, magnitude = rows.mean(axis=0), np.abs(rows).sum(axis=0) / n
    # float32: n - 1 additions and one division, each rounding by at most 2^-24 relative.
    ok = bool(np.all(np.abs(got - exact) <= (n + 1) * 2.0**-24 * (magnitude + np.abs(exact))))
    same = identical_across_ranks(got)
    ok = all_ranks_agree(ok)
    assert same and ok


@pytest.mark.mpi
@pytest.mark.parametrize("dtype, eps", [("float16", 2.0**-11), ("bfloat16", 2.0**-8)])
def test_16_bit_ring_is_the_mean_up_to_one_rounding_per_hop(dtype, eps):
    n = WORLD.Get_size()
    x = my_input()
    got = Cast16(dtype).allreduce_mean(x, WORLD)
    rows = everyone(x).astype(np.float64)
    exact, magnitude = rows.mean(axis=0), np.abs(rows).sum(axis=0) / n
    # One rounding of each hop's partial sum and of the mean, each at most eps relative.
    ok = np.all(np.abs(got - exact) <= (n + 1) * eps * (magnitude + np.abs(exact)) + 1e-30)
    same = identical_across_ranks(got)
    ok = all_ranks_agree(bool(ok))
    assert same and ok


@pytest.mark.mpi
@pytest.mark.parametrize("stochastic", [False, True])
def test_int8_ring_with_shared_scales_is_the_mean_up_to_one_step_per_hop(stochastic):
    n = WORLD.Get_size()
    x = my_input()
    got = Int8(segment=512, stochastic=stochastic, seed=WORLD.Get_rank()).allreduce_mean(x, WORLD)
    rows = everyone(x).astype(np.float64)
    exact = rows.mean(axis=0)
    padded = np.zeros(-(-x.size // 512) * 512)
    padded[:x.size] = np.abs(rows).max(axis=0)
    step = np.repeat(padded.reshape(-1, 512).max(axis=1) / 127, 512)[:x.size]  # the shared scale
    # Hop h rounds a sum of h ranks by at most h steps (one, rounding to nearest); the mean
    # divides those by n; the final mean is rounded once more by one step.
    bound = (sum(range(1, n)) / n + 1) * step * (2 if stochastic else 1) + 1e-7
    ok = np.all(np.abs(got - exact) <= bound)
    same = identical_across_ranks(got)
    ok = all_ranks_agree(bool(ok))
    assert same and ok


@pytest.mark.mpi
def test_powersgd_is_exact_when_the_gradients_share_a_low_rank_space():
    rows, cols = PowerSGD.matrix_shape(64 * 64)
    rng = np.random.default_rng(0)  # the same column space on every rank
    left, right = rng.standard_normal((rows, 2)), rng.standard_normal((2, cols))
    mix = np.random.default_rng([1, WORLD.Get_rank()]).standard_normal((2, 2))
    x = (left @ mix @ right).astype(np.float32).reshape(-1)
    got = PowerSGD(rank=2).allreduce_mean(x, WORLD)
    exact = everyone(x).astype(np.float64).mean(axis=0)
    same = identical_across_ranks(got)
    ok = all_ranks_agree(bool(np.linalg.norm(got - exact) <= 1e-4 * np.linalg.norm(exact)))
    assert same and ok


@pytest.mark.mpi
def test_powersgd_per_layer_is_exact_for_shared_low_rank_layers_and_averages_vectors_exactly():
    rng = np.random.default_rng(0)
    layers = [(40, 24), (16, 56)]
    mine = np.random.default_rng([2, WORLD.Get_rank()])
    parts, layout, at = [], [], 0
    for rows, cols in layers:
        left, right = rng.standard_normal((rows, 2)), rng.standard_normal((2, cols))
        parts.append((left @ mine.standard_normal((2, 2)) @ right).reshape(-1))
        layout.append((at, at + rows * cols, (rows, cols)))
        at += rows * cols
    parts.append(mine.standard_normal(7))
    layout.append((at, at + 7, (7,)))
    x = np.concatenate(parts).astype(np.float32)
    c = PowerSGD(rank=2)
    c.set_layout(layout)
    got = c.allreduce_mean(x, WORLD)
    exact = everyone(x).astype(np.float64).mean(axis=0)
    ok = np.linalg.norm(got[:at] - exact[:at]) <= 1e-4 * np.linalg.norm(exact[:at])
    ok &= np.allclose(got[at:], exact[at:], rtol=1e-6, atol=1e-7)
    same = identical_across_ranks(got)
    ok = all_ranks_agree(bool(ok))
    assert same and ok


@pytest.mark.mpi
def test_error_feedback_state_differs_per_rank_but_results_agree():
    n = WORLD.Get_size()
    c = compression.get("ef+topk:ratio=0.01")
    inputs = [my_input(seed=step) for step in range(3)]
    got = [c.allreduce_mean(x, WORLD) for x in inputs]
    given = everyone(np.sum(inputs, axis=0, dtype=np.float64))  # each rank's inputs, summed over the steps
    residuals = everyone(c.residual).astype(np.float64)
    # Each rank's own residual: its inputs differ, so what it holds back differs too.
    differs = all(not np.array_equal(residuals[i], residuals[j]) for i in range(n) for j in range(i))
    # Nothing is lost, only delayed: what was averaged plus the mean held back is the mean of what was given,
    # up to float32 roundings of a few partial sums.
    delivered = np.sum(got, axis=0, dtype=np.float64) + residuals.mean(axis=0)
    expected = given.mean(axis=0)
    kept = bool(np.allclose(delivered, expected, rtol=0, atol=1e-6 * len(inputs) * np.abs(given).max()))
    same = identical_across_ranks(got[-1])
    ok = all_ranks_agree(differs and kept)
    assert same and ok


@pytest.mark.mpi
def test_powersgd_follows_a_reference_written_here_over_steps():
    # Full-rank gradients, so the approximation and the residual matter: two
    # matrices of one shape (one batched QR), one of another, a 4-D weight and a vector.
    shapes = [(24, 16), (24, 16), (16, 40), (6, 2, 3, 3), (9,)]
    layout, at = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        layout.append((at, at + size, shape))
        at += size
    c = PowerSGD(rank=3, min_ratio=1)  # every matrix compressed, the vector whole
    c.set_layout(layout)
    c.compress(np.zeros(at, np.float32))  # makes the first Q, and leaves it
    qs = [q.double().numpy() for q in c.state_dict()["q"]]
    n = WORLD.Get_size()
    residuals = np.zeros((n, at))
    ok = len(qs) == 4
    for step in range(3):
        x = my_input(at, seed=10 + step)
        got = c.allreduce_mean(x, WORLD)
        corrected = everyone(x).astype(np.float64) + residuals
        expected = np.empty(at)
        matrices = [(lo, hi, shape) for lo, hi, shape in layout if len(shape) >= 2]
        for i, (lo, hi, shape) in enumerate(matrices):
            ms = corrected[:, lo:hi].reshape(n, shape[0], -1)
            p = np.linalg.qr(np.mean([m @ qs[i] for m in ms], axis=0))[0]
            qs[i] = np.mean([m.T @ p for m in ms], axis=0)
            expected[lo:hi] = (p @ qs[i].T).reshape(-1)
        lo, hi, _ = layout[-1]
        expected[lo:hi] = corrected[:, lo:hi].mean(axis=0)  # a vector travels whole
        residuals = corrected - expected
        residuals[:, lo:hi] = 0
        ok &= bool(np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max())
    same = identical_across_ranks(got)
    ok = all_ranks_agree(ok)
    assert same and ok
