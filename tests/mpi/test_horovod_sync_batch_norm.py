"""hvd.SyncBatchNorm against one process's torch BatchNorm on the concatenated batch.

Every rank builds the whole batch from one seed and keeps its slice (rank r
holds ``sizes[r]`` samples, unequal where asked, none on rank 0 in one case).
The reference, torch.nn.BatchNorm1d/2d on the whole batch, runs on every
rank; each rank compares its slice of the output and of the input gradient,
the weight and bias gradients summed over ranks (SyncBatchNorm leaves them
per rank, as Horovod does, for the optimizer's allreduce to add), and the
running statistics after three steps, then eval's output.

Tolerances: float64 to 1e-10 (the sums differ only in order), float32 to
2e-5 relative (order of float32 sums over at most 40 values per channel, and
the float64 statistics here against torch's float32 ones).
"""
import pytest
import torch
from mpi4py import MPI

import ringtrain.horovod as hvd
from ringtrain.collectives import CollectiveMismatchError
from tests.helpers import all_ranks_agree

WORLD = MPI.COMM_WORLD
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def _slice(sizes: list[int], rank: int) -> slice:
    lo = sum(sizes[:rank])
    return slice(lo, lo + sizes[rank])


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    a = t.detach().double().numpy().copy()
    WORLD.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
    return torch.from_numpy(a)


def _compare(sizes, shape, dtype, reference_cls, steps=3, **options):
    """Run ``steps`` training steps and one eval on both; return a list of (what, ok) pairs."""
    hvd.init()
    rank = hvd.rank()
    gen = torch.Generator().manual_seed(1234)
    c = shape[0]
    sync = hvd.SyncBatchNorm(c, **options).to(dtype)
    ref = reference_cls(c, **options).to(dtype)
    if sync.affine:  # not torch's ones and zeros, so that the affine part is checked
        with torch.no_grad():
            for p in (sync.weight, sync.bias):
                p.copy_(torch.randn(c, generator=gen, dtype=dtype))
        ref.load_state_dict(sync.state_dict())
    mine = _slice(sizes, rank)
    checks = []
    for step in range(steps):
        whole = 3.0 + 2.0 * torch.randn(sum(sizes), *shape, generator=gen, dtype=dtype)  # off-centre, not unit
        upstream = torch.randn(sum(sizes), *shape, generator=gen, dtype=dtype)  # dL/dy, via L = sum(y * upstream)
        x_ref = whole.clone().requires_grad_()
        y_ref = ref(x_ref)
        (y_ref * upstream).sum().backward()
        x = whole[mine].clone().requires_grad_()
        y = sync(x)
        (y * upstream[mine]).sum().backward()
        tol = TOL[dtype]
        checks.append((f"step {step} output", torch.allclose(y, y_ref[mine], **tol)))
        checks.append((f"step {step} input gradient", torch.allclose(x.grad, x_ref.grad[mine], **tol)))
        if sync.affine:
            for name in ("weight", "bias"):
                summed = _sum_over_ranks(getattr(sync, name).grad)
                checks.append((f"step {step} {name} gradient",
                               torch.allclose(summed, getattr(ref, name).grad.double(), **tol)))
                getattr(sync, name).grad = getattr(ref, name).grad = None
    if sync.track_running_stats:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            checks.append((name, torch.allclose(getattr(sync, name).double(), getattr(ref, name).double(),
                                                **TOL[dtype])))
    sync.eval(), ref.eval()
    whole = 3.0 + 2.0 * torch.randn(sum(sizes), *shape, generator=gen, dtype=dtype)
    with torch.no_grad():
        checks.append(("eval output", torch.allclose(sync(whole[mine]), ref(whole)[mine], **TOL[dtype])))
    return checks


def _assert_all(checks):
    failed = [what for what, ok in checks if not ok]
    assert all_ranks_agree(not failed), f"rank {WORLD.Get_rank()}: differs in {failed}"


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape, reference_cls", [((4,), torch.nn.BatchNorm1d), ((3, 5), torch.nn.BatchNorm1d),
                                                  ((2, 3, 4), torch.nn.BatchNorm2d)])
def test_equal_batches_match_one_process(shape, reference_cls, dtype):
    _assert_all(_compare([4] * WORLD.Get_size(), shape, dtype, reference_cls))


@pytest.mark.mpi
@pytest.mark.parametrize("shape, reference_cls", [((4,), torch.nn.BatchNorm1d), ((2, 3, 4), torch.nn.BatchNorm2d)])
def test_unequal_batches_match_one_process(shape, reference_cls):
    sizes = [r + 1 for r in range(WORLD.Get_size())]  # 1, 2, 3, 4 samples: a mean of means would be wrong
    if len(sizes) == 1:
        sizes = [3]
    _assert_all(_compare(sizes, shape, torch.float64, reference_cls))


@pytest.mark.mpi(min_size=2)
def test_a_rank_with_no_samples_takes_part():
    sizes = [0] + [3] * (WORLD.Get_size() - 1)
    _assert_all(_compare(sizes, (3, 2), torch.float64, torch.nn.BatchNorm1d))


@pytest.mark.mpi
@pytest.mark.parametrize("options", [dict(affine=False), dict(momentum=None), dict(track_running_stats=False),
                                     dict(eps=1e-2, momentum=0.5)])
def test_options_as_torch(options):
    sizes = [2 + r % 2 for r in range(WORLD.Get_size())]
    _assert_all(_compare(sizes, (3, 4), torch.float64, torch.nn.BatchNorm1d, **options))


@pytest.mark.mpi
def test_one_value_per_channel_is_refused_on_every_rank():
    hvd.init()
    x = torch.randn(1 if hvd.rank() == 0 else 0, 3)  # one sample in all
    try:
        hvd.SyncBatchNorm(3)(x)
        raised = ""
    except ValueError as e:
        raised = str(e)
    assert all_ranks_agree("more than 1 value per channel" in raised), raised


@pytest.mark.mpi(min_size=2)
def test_channel_counts_that_differ_raise_on_every_rank():
    hvd.init()
    c = 3 if hvd.rank() == 0 else 4
    try:
        hvd.SyncBatchNorm(c)(torch.randn(2, c))
        raised = ""
    except CollectiveMismatchError as e:
        raised = str(e)
    assert all_ranks_agree("different arguments" in raised), raised


@pytest.mark.mpi
def test_bad_input_dimensions_are_refused():
    hvd.init()
    bn = hvd.SyncBatchNorm(3)
    with pytest.raises(ValueError, match="at least 2D"):
        bn(torch.randn(3))
    with pytest.raises(ValueError, match="num_features=3"):
        bn(torch.randn(2, 4))
