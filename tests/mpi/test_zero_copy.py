"""Zero-copy buckets: gradients accumulate in their bucket through zero_grad, and every result stays the mean."""
import numpy as np
import pytest
import torch
from mpi4py import MPI

import ringtrain
from tests.helpers import all_ranks_agree

WORLD = MPI.COMM_WORLD


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def batch(step):
    g = torch.Generator().manual_seed(100 * step + WORLD.Get_rank())
    return torch.randn(5, 8, generator=g)


def mean_of_local(model, xs):
    """The reference: this rank's gradient of the summed losses, averaged over ranks in float64."""
    model.zero_grad(set_to_none=True)
    for x in xs:
        model(x).square().sum().backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy()
    WORLD.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
    return g / WORLD.Get_size()


def in_bucket(reducer, p) -> bool:
    bucket, _ = reducer._where[id(p)]
    start = bucket.buffer.data_ptr()
    return start <= p.grad.data_ptr() < start + bucket.buffer.numel() * bucket.buffer.element_size()


@pytest.mark.mpi
@pytest.mark.parametrize("set_to_none", [True, False])
def test_gradients_accumulate_in_their_buckets_through_zero_grad(set_to_none):
    model, reference = mlp(), mlp()
    reducer = ringtrain.GradientReducer(model, bucket_cap_mb=1e-3)
    ok = True
    for step in range(3):
        model.zero_grad(set_to_none=set_to_none)
        model(batch(step)).square().sum().backward()
        # Autograd wrote into the buckets: nothing to copy (on one rank the reducer does nothing at all).
        ok &= WORLD.Get_size() == 1 or all(in_bucket(reducer, p) for p in model.parameters())
        reducer.synchronize()
        got = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy()
        ok &= bool(np.allclose(got, mean_of_local(reference, [batch(step)]), rtol=1e-6, atol=1e-7))
    reducer.close()
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_accumulation_under_no_sync_is_the_mean_of_the_sum():
    model, reference = mlp(), mlp()
    reducer = ringtrain.GradientReducer(model, bucket_cap_mb=1e-3)
    model.zero_grad(set_to_none=True)
    with reducer.no_sync():
        model(batch(0)).square().sum().backward()
    model(batch(1)).square().sum().backward()
    reducer.synchronize()
    reducer.close()
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy()
    assert all_ranks_agree(bool(np.allclose(got, mean_of_local(reference, [batch(0), batch(1)]),
                                            rtol=1e-6, atol=1e-7)))


@pytest.mark.mpi
def test_a_forward_without_grad_attaches_nothing():
    model = mlp()
    reducer = ringtrain.GradientReducer(model)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        model(batch(0))
    none_after_eval = all(p.grad is None for p in model.parameters())
    model(batch(0)).sum().backward()
    reducer.synchronize()
    reducer.close()
    assert all_ranks_agree(none_after_eval and all(p.grad is not None for p in model.parameters()))


def reducer_of_parameters(model, **kwargs):
    """A reducer given the parameters, not the module: a hook on each parameter attaches its view before backward
    accumulates into it (what ringtrain.horovod's DistributedOptimizer does)."""
    reducer = ringtrain.GradientReducer(list(model.parameters()), bucket_cap_mb=1e-3, **kwargs)
    for p in model.parameters():
        p.register_hook(lambda grad, p=p: reducer.attach_gradient(p))
    return reducer


@pytest.mark.mpi
def test_a_list_of_parameters_averages_in_place_through_zero_grad():
    model, reference = mlp(), mlp()
    reducer = reducer_of_parameters(model)
    ok = True
    for step in range(3):
        model.zero_grad(set_to_none=True)
        ok &= all(p.grad is None for p in model.parameters())  # no forward hook: nothing attached before backward
        model(batch(step)).square().sum().backward()
        ok &= WORLD.Get_size() == 1 or all(in_bucket(reducer, p) for p in model.parameters())
        reducer.synchronize()
        got = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy()
        ok &= bool(np.allclose(got, mean_of_local(reference, [batch(step)]), rtol=1e-6, atol=1e-7))
    reducer.close()
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_backward_passes_average_the_sum_of_the_last_n():
    model, reference = mlp(), mlp()
    reducer = reducer_of_parameters(model)
    reducer.backward_passes = 2
    model.zero_grad(set_to_none=True)
    model(batch(0)).square().sum().backward()
    held = not reducer.pending if WORLD.Get_size() == 1 else all(reducer.passes(p) == 1 for p in model.parameters())
    held &= not any(b.submitted for b in reducer.buckets)  # the first pass only accumulates
    model(batch(1)).square().sum().backward()
    reducer.synchronize()
    reducer.close()
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy()
    assert all_ranks_agree(held and bool(np.allclose(got, mean_of_local(reference, [batch(0), batch(1)]),
                                                     rtol=1e-6, atol=1e-7)))
