"""The ringtrain torch.distributed backend: every operation against closed forms, at any world size.

Each rank's input is a function of (seed, rank), so every rank computes the
exact expected result itself; floats are compared within the summation's
rounding, integers exactly. Assertions come after the last collective.
"""
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
from mpi4py import MPI

from tests.helpers import all_ranks_agree
from tests.mpi.backend_setup import start, stop

WORLD = MPI.COMM_WORLD
R = dist.ReduceOp
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int16,
          torch.int32, torch.int64, torch.bool, torch.complex64, torch.complex128]
OPS = {"SUM": R.SUM, "AVG": R.AVG, "MIN": R.MIN, "MAX": R.MAX, "PRODUCT": R.PRODUCT, "BAND": R.BAND,
       "BOR": R.BOR, "BXOR": R.BXOR, "PREMUL_SUM": dist._make_nccl_premul_sum(0.25)}


@pytest.fixture(scope="module", autouse=True)
def backend():
    yield start()
    stop()


def value(rank: int, shape, dtype, seed: int = 0) -> torch.Tensor:
    """Rank ``rank``'s input: small values, so that sums and products stay exact in every dtype."""
    g = torch.Generator().manual_seed(seed * 1000 + rank)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_complex:
        return torch.complex(torch.randint(-3, 4, shape, generator=g).double(),
                             torch.randint(-3, 4, shape, generator=g).double()).to(dtype)
    low = 0 if dtype == torch.uint8 else -3
    return torch.randint(low, 4, shape, generator=g).to(dtype)


def expected(name: str, inputs: list[torch.Tensor]) -> torch.Tensor | None:
    """The reduction of every rank's input, computed here; None where the backend must refuse."""
    dtype = inputs[0].dtype
    floating = dtype.is_floating_point or dtype.is_complex
    if name in ("BAND", "BOR", "BXOR") and floating:
        return None
    if dtype.is_complex and name not in ("SUM", "AVG", "PREMUL_SUM"):
        return None  # torch itself refuses these (it reduces complex tensors as real pairs)
    if name in ("AVG", "PREMUL_SUM") and not floating:
        return None
    if dtype == torch.bool:
        stack = torch.stack(inputs).to(torch.uint8)
        out = {"SUM": stack.amax(0), "MAX": stack.amax(0), "PRODUCT": stack.amin(0), "MIN": stack.amin(0),
               "BAND": stack.amin(0), "BOR": stack.amax(0),
               "BXOR": stack.sum(0) % 2}[name]
        return out.bool()
    wide = torch.stack([x.to(torch.complex128 if dtype.is_complex else
                                torch.float64 if floating else torch.int64) for x in inputs])
    if name == "SUM":
        out = wide.sum(0)
    elif name == "AVG":
        out = wide.sum(0) / len(inputs)
    elif name == "PREMUL_SUM":
        out = (wide * 0.25).sum(0)
    elif name == "PRODUCT":
        out = wide.prod(0)
    elif name == "MIN":
        out = wide.amin(0)
    elif name == "MAX":
        out = wide.amax(0)
    else:
        out = wide[0].clone()
        for x in wide[1:]:
            out = {"BAND": out & x, "BOR": out | x, "BXOR": out ^ x}[name]
    return out.to(dtype)  # integer sums and products wrap, as in C


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    if got.dtype.is_floating_point or got.dtype.is_complex:
        tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(got.dtype, 1e-6)
        return torch.allclose(got.to(torch.complex128 if got.dtype.is_complex else torch.float64),
                              want.to(torch.complex128 if want.dtype.is_complex else torch.float64),
                              rtol=tol, atol=tol)
    return torch.equal(got, want)


@pytest.mark.mpi
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_all_reduce_every_dtype_and_op_equals_the_closed_form_or_is_refused(layout):
    n, me = WORLD.Get_size(), WORLD.Get_rank()
    failures = []
    for dtype in DTYPES:
        for name, op in OPS.items():
            inputs = [value(r, (3, 5), dtype) for r in range(n)]
            want = expected(name, inputs)
            t = inputs[me].clone()
            if layout == "transposed":
                t = t.t().contiguous().t()  # same values, column-major strides
                assert not t.is_contiguous() or t.numel() <= 1
            try:
                dist.all_reduce(t, op=op)
                refused = None
            except (ValueError, RuntimeError) as e:
                refused = str(e)
            if want is None and refused is None:
                failures.append(f"{name} {dtype}: not refused")
            elif want is not None and (refused is not None or not close(t, want)):
                failures.append(f"{name} {dtype}: {refused or t.tolist()} != {want.tolist()}")
    assert all_ranks_agree(not failures), failures


@pytest.mark.mpi
@pytest.mark.parametrize("count", [0, 1, 7, (16 << 20) // 4 + 3])  # the last takes the ring (16 MiB and up)
def test_all_reduce_sum_and_avg_of_float32_at_every_size(count):
    n, me = WORLD.Get_size(), WORLD.Get_rank()
    base = (torch.arange(count) % 1000).float()  # small integers: every partial sum is exact in float32
    x = base * (me + 1)
    y = x.clone()
    dist.all_reduce(x)
    dist.all_reduce(y, op=R.AVG)
    total = n * (n + 1) / 2
    ok = torch.equal(x, base * total) and torch.allclose(y, base * total / n, rtol=1e-6)
    assert all_ranks_agree(ok)


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.bool, torch.complex64])
def test_gathers_scatters_and_broadcast_move_every_dtype(dtype):
    n, me = WORLD.Get_size(), WORLD.Get_rank()
    mine = value(me, (2, 3), dtype, seed=1)
    everyone = [value(r, (2, 3), dtype, seed=1) for r in range(n)]
    ok = []
    gathered = [torch.zeros_like(mine) for _ in range(n)]
    dist.all_gather(gathered, mine)
    ok.append(all(torch.equal(a, b) for a, b in zip(gathered, everyone)))
    flat = torch.zeros(n * 2, 3, dtype=dtype)
    dist.all_gather_into_tensor(flat, mine)
    ok.append(torch.equal(flat, torch.cat(everyone)))
    inplace = torch.zeros(n * 2, 3, dtype=dtype)  # FSDP2's way: the input is this rank's slice of the output
    inplace[me * 2:(me + 1) * 2] = mine
    dist.all_gather_into_tensor(inplace, inplace[me * 2:(me + 1) * 2])
    ok.append(torch.equal(inplace, torch.cat(everyone)))
    b = mine.clone()
    dist.broadcast(b, src=n - 1)
    ok.append(torch.equal(b, everyone[n - 1]))
    transposed = mine.clone().t().contiguous().t()
    dist.broadcast(transposed, src=0)
    ok.append(torch.equal(transposed, everyone[0]))
    out = [torch.zeros_like(mine) for _ in range(n)] if me == 0 else None
    dist.gather(mine, out, dst=0)
    ok.append(me != 0 or all(torch.equal(a, b) for a, b in zip(out, everyone)))
    piece = torch.zeros_like(mine)
    dist.scatter(piece, [value(r, (2, 3), dtype, seed=2) for r in range(n)] if me == 0 else None, src=0)
    ok.append(torch.equal(piece, value(me, (2, 3), dtype, seed=2)))
    assert all_ranks_agree(all(ok)), ok


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int32, torch.float64])
@pytest.mark.parametrize("count", [2, (8 << 20) // 4])
def test_reduce_scatter_and_reduce_equal_the_closed_form(dtype, count):
    n, me = WORLD.Get_size(), WORLD.Get_rank()
    inputs = [value(r, (n * count,), dtype, seed=3) for r in range(n)]
    want = expected("SUM", inputs)
    original = inputs[me].clone()
    out = torch.zeros(count, dtype=dtype)
    dist.reduce_scatter_tensor(out, inputs[me])
    ok = [close(out, want[me * count:(me + 1) * count]), torch.equal(inputs[me], original)]  # input untouched
    lists = torch.zeros(count, dtype=dtype)
    dist.reduce_scatter(lists, list(inputs[me].chunk(n)), op=R.MAX)
    ok.append(close(lists, expected("MAX", inputs)[me * count:(me + 1) * count]))
    if dtype.is_floating_point:
        avg = torch.zeros(count, dtype=dtype)
        dist.reduce_scatter_tensor(avg, inputs[me], op=R.AVG)
        ok.append(close(avg, expected("AVG", inputs)[me * count:(me + 1) * count]))
    r = inputs[me][:5].clone()
    dist.reduce(r, dst=n - 1, op=R.SUM)
    ok.append(me != n - 1 or close(r, want[:5]))
    assert all_ranks_agree(all(ok)), ok


@pytest.mark.mpi
def test_all_to_all_with_uneven_splits_and_lists():
    n, me = WORLD.Get_size(), WORLD.Get_rank()
    # Rank r sends j+1 rows to rank j, each row (r, j, k) identifying sender, receiver and position.
    send = torch.tensor([[me, j, k] for j in range(n) for k in range(j + 1)], dtype=torch.float32)
    recv = torch.zeros(n * (me + 1), 3)
    dist.all_to_all_single(recv, send, output_split_sizes=[me + 1] * n, input_split_sizes=[j + 1 for j in range(n)])
    want = torch.tensor([[r, me, k] for r in range(n) for k in range(me + 1)], dtype=torch.float32)
    outs = [torch.zeros(2, dtype=torch.int64) for _ in range(n)]
    dist.all_to_all(outs, [torch.tensor([me, j]) for j in range(n)])
    ok = torch.equal(recv, want) and all(torch.equal(o, torch.tensor([r, me])) for r, o in enumerate(outs))
    assert all_ranks_agree(ok)


@pytest.mark.mpi
@pytest.mark.parametrize("count", [4, (4 << 20) // 4])  # 4 MiB: blocking sends would deadlock here
def test_batch_isend_irecv_around_the_ring(count):
    n, me = WORLD.Get_size(), WORLD.Get_rank()
    out = torch.full((count,), float(me))
    got = torch.zeros(count)
    ops = [dist.P2POp(dist.isend, out, (me + 1) % n), dist.P2POp(dist.irecv, got, (me - 1) % n)]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    assert all_ranks_agree(torch.equal(got, torch.full((count,), float((me - 1) % n))))


@pytest.mark.mpi
def test_subgroups_objects_and_barrier():
    n, me = WORLD.Get_size(), WORLD.Get_rank()
    evens = list(range(0, n, 2))
    group = dist.new_group(evens)  # every rank calls new_group; only members use it
    t = torch.ones(1)
    if me in evens:
        dist.all_reduce(t, group=group)
    objects = [None] * n
    dist.all_gather_object(objects, {"rank": me, "text": "x" * me})
    dist.barrier()
    ok = (t.item() == (len(evens) if me in evens else 1)) and objects == [{"rank": r, "text": "x" * r}
                                                                        for r in range(n)]
    assert all_ranks_agree(ok), (t, objects)


@pytest.mark.mpi(min_size=2)
def test_async_op_returns_before_the_peers_have_joined():
    me = WORLD.Get_rank()
    t = torch.ones(4)
    timed_out = True
    if me == 0:
        work = dist.all_reduce(t, async_op=True)
        early = work.is_completed()  # the others are still asleep
        try:
            work.wait(timedelta(milliseconds=50))  # a bounded wait gives up, and the collective goes on
            timed_out = False
        except RuntimeError as e:
            timed_out = "did not finish within 0.05 s" in str(e)
        work.wait()
    else:
        time.sleep(0.5)
        dist.all_reduce(t)
        early = False
    ok = not early and timed_out and torch.equal(t, torch.full((4,), float(WORLD.Get_size())))
    assert all_ranks_agree(ok), (early, timed_out, t)


@pytest.mark.mpi(min_size=2)
def test_with_the_handshake_on_a_mismatched_call_raises_at_wait_on_every_rank():
    n, me = WORLD.Get_size(), WORLD.Get_rank()
    group = dist.new_group(list(range(n)))
    backend = group if hasattr(group, "thread") else group._get_backend(torch.device("cpu"))
    backend.check = True  # RINGTRAIN_CHECK=1, for this group only
    error = None
    try:
        dist.all_reduce(torch.ones(3 + me), group=group)  # a different count on every rank
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    after = torch.ones(1)
    try:  # the broken group says so at once instead of hanging
        dist.all_reduce(after, group=group)
        later = None
    except Exception as e:
        later = str(e)
    ok = error is not None and "CollectiveMismatchError" in error or "differ" in (error or "")
    assert all_ranks_agree(ok and later is not None and "earlier collective" in later), (error, later)
