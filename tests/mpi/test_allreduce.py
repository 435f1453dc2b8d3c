"""allreduce against MPI_Allreduce on random data: every dtype, op, algorithm and edge size.

Run at several world sizes: ``mpiexec -n N python -m pytest --with-mpi tests/mpi``.
Expected values come from MPI_Allreduce in float64 (or in the integer type,
exactly), with an error bound in closed form for the float types.
"""
import numpy as np
import pytest
import torch
from mpi4py import MPI

import ringtrain
from tests.helpers import all_ranks_agree, identical_across_ranks

WORLD = MPI.COMM_WORLD
DTYPES = ["float16", "bfloat16", "float32", "float64", "int32", "int64"]
SIZES = ["0", "1", "n-1", "n", "n+1", "prime", "2^20+3"]
ALGORITHMS = ["ring", "recursive_doubling", "ps", "mpi", "auto", "hierarchical"]
# On one rank every algorithm takes the same early return: one of them covers it.
ALGORITHMS_HERE = ALGORITHMS if WORLD.Get_size() > 1 else ["auto"]
# Relative spacing of each float type: one ulp at 1.0.
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}


def element_count(label: str, n: int) -> int:
    return {"0": 0, "1": 1, "n-1": n - 1, "n": n, "n+1": n + 1, "prime": 100_003,
            "2^20+3": (1 << 20) + 3}[label]


def random_buffer(dtype: str, count: int, seed: int):
    """This rank's input: a numpy array, or a torch tensor for bfloat16."""
    rng = np.random.default_rng([seed, WORLD.Get_rank()])
    if dtype.startswith("int"):
        return rng.integers(-1000, 1000, size=count).astype(dtype)
    values = rng.standard_normal(count) * 10
    if dtype == "bfloat16":
        return torch.from_numpy(values).to(torch.bfloat16)
    return values.astype(dtype)


def as_float64(x) -> np.ndarray:
    return x.double().numpy() if isinstance(x, torch.Tensor) else x.astype(np.float64)


def reference(x, op: str, comm) -> tuple[np.ndarray, np.ndarray]:
    """The exact-as-float64 result, and sum(|x|) over ranks for the error bound."""
    wide = as_float64(x)
    total, magnitude = wide.copy(), np.abs(wide)
    comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
    comm.Allreduce(MPI.IN_PLACE, magnitude, op=MPI.SUM)
    if op == "mean":
        total /= comm.Get_size()
    return total, magnitude


def within_bound(got, expected, magnitude, dtype: str, n: int) -> bool:
    """Float results: rounding of the final value plus float32 (or native) partial sums.

    16-bit types round once at the end (1 ulp allowed) after float32 partial
    sums; float32/float64 accumulate n - 1 rounded additions.
    """
    got = as_float64(got)
    if dtype in ("float16", "bfloat16"):
        tiny = 2.0**-24 if dtype == "float16" else 2.0**-133
        bound = EPS[dtype] * np.abs(expected) + n * 2.0**-24 * magnitude + tiny
    else:
        bound = n * EPS[dtype] * magnitude + EPS[dtype] * np.abs(expected)
    return bool(np.all(np.abs(got - expected) <= bound))


@pytest.mark.mpi
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("algorithm", ALGORITHMS_HERE)
@pytest.mark.parametrize("op", ["sum", "mean"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_allreduce_matches_mpi_allreduce(dtype, op, algorithm, size):
    n = WORLD.Get_size()
    count = element_count(size, n)
    x = random_buffer(dtype, count, seed=count + 7)
    if op == "mean" and dtype.startswith("int"):
        with pytest.raises(TypeError, match="needs a floating dtype"):
            ringtrain.allreduce(x, op=op, algorithm=algorithm)
        return
    if dtype.startswith("int"):
        expected = x.copy()
        WORLD.Allreduce(MPI.IN_PLACE, expected, op=MPI.SUM)
        out = ringtrain.allreduce(x, op=op, algorithm=algorithm)
        correct = bool(np.array_equal(out, expected))
    else:
        expected, magnitude = reference(x, op, WORLD)
        out = ringtrain.allreduce(x, op=op, algorithm=algorithm)
        correct = within_bound(out, expected, magnitude, dtype, n)
    same_everywhere = identical_across_ranks(as_float64(out))
    correct_everywhere = all_ranks_agree(correct)
    assert out is x
    assert correct_everywhere, f"{dtype} {op} {algorithm} count={count}: result outside the bound on some rank"
    assert same_everywhere, f"{dtype} {op} {algorithm} count={count}: ranks differ bitwise"


@pytest.mark.mpi
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_torch_float32_tensor_of_any_shape(algorithm):
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) * (r + 1)
    ringtrain.allreduce(x, algorithm=algorithm)
    # sum over ranks of (r + 1) * v = v * n (n + 1) / 2: exact for these small integers.
    expected = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) * (n * (n + 1) / 2)
    assert all_ranks_agree(torch.equal(x, expected))


@pytest.mark.mpi
@pytest.mark.parametrize("algorithm", ["ring", "recursive_doubling", "ps", "mpi"])
def test_split_communicators_reduce_within_their_group(algorithm):
    r = WORLD.Get_rank()
    sub = WORLD.Split(color=r % 2, key=r)
    x = random_buffer("float64", 1001, seed=3)
    expected, magnitude = reference(x, "sum", sub)
    ringtrain.allreduce(x, algorithm=algorithm, comm=sub)
    ok = within_bound(x, expected, magnitude, "float64", sub.Get_size())
    same = identical_across_ranks(x, sub)
    sub.Free()
    assert all_ranks_agree(ok and same)


@pytest.mark.mpi
@pytest.mark.parametrize("algorithm", ["ring", "recursive_doubling", "ps", "mpi"])
def test_comm_self_leaves_the_buffer_alone(algorithm):
    x = random_buffer("float32", 17, seed=5)
    before = x.copy()
    ringtrain.allreduce(x, algorithm=algorithm, comm=MPI.COMM_SELF)
    assert np.array_equal(x, before)


@pytest.mark.mpi
def test_user_messages_on_the_same_communicator_are_not_intercepted():
    # ringtrain talks on a private duplicate, so a pending user receive with
    # a wildcard tag must not match the ring's own messages.
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    box = np.zeros(1, np.int64)
    req = WORLD.Irecv(box, source=(r - 1) % n, tag=MPI.ANY_TAG)
    x = np.ones(1000, np.float64)
    ringtrain.allreduce(x, algorithm="ring")
    WORLD.Send(np.array([r], np.int64), dest=(r + 1) % n, tag=0)
    req.Wait()
    assert all_ranks_agree(bool(np.all(x == n)) and int(box[0]) == (r - 1) % n)
