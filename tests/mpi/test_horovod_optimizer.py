"""ringtrain.horovod.DistributedOptimizer against one process trained on the concatenated batch.

Every rank builds the same model (seed 0) and trains on its own slice of a
global batch; the reference is the plain optimizer on the whole batch, which
every rank computes alone. With a mean loss and equal slices, the mean of the
ranks' gradients is the whole batch's gradient, so after the same steps the
weights agree to float32 rounding (SGD: 1e-6; Adam, whose first steps move
each weight by about lr whatever the gradient's size: 1e-5).
"""
import warnings

import numpy as np
import pytest
import torch
from mpi4py import MPI

import ringtrain.horovod as hvd
from tests.helpers import all_ranks_agree, identical_across_ranks

WORLD = MPI.COMM_WORLD
ROWS = 4  # rows of the batch per rank


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))


def global_batch(step, micro=0):
    g = torch.Generator().manual_seed(1000 * step + micro)
    return torch.randn(ROWS * WORLD.Get_size(), 6, generator=g), torch.randn(ROWS * WORLD.Get_size(), 3, generator=g)


def mine(batch):
    r = WORLD.Get_rank()
    return tuple(t[r * ROWS:(r + 1) * ROWS] for t in batch)


def loss_of(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


def train(make_optimizer, steps=4, passes=1, distributed=True, **options):
    """Weights after ``steps`` steps, each of ``passes`` backward passes (summed, as Horovod does)."""
    model = mlp()
    opt = make_optimizer(model.parameters())
    if distributed:
        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(),
                                       backward_passes_per_step=passes, **options)
    for step in range(steps):
        opt.zero_grad()
        for micro in range(passes):
            batch = global_batch(step, micro)
            loss_of(model, mine(batch) if distributed else batch).backward()
        opt.step()
    return model, opt


@pytest.fixture(autouse=True)
def horovod():
    hvd.init()


@pytest.mark.mpi
@pytest.mark.parametrize("name, make, tol", [
    ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01), 1e-6),
    ("adam", lambda ps: torch.optim.Adam(ps, lr=0.01), 1e-5)])
def test_equals_one_process_on_the_concatenated_batch(name, make, tol):
    model, opt = train(make)
    reference, _ = train(make, distributed=False)
    ok = bool(np.allclose(flat(model), flat(reference), rtol=tol, atol=tol))
    ok &= isinstance(opt, type(make([torch.nn.Parameter(torch.zeros(1))])))
    assert identical_across_ranks(flat(model)) and all_ranks_agree(ok)


@pytest.mark.mpi
def test_backward_passes_are_summed_then_averaged():
    make = lambda ps: torch.optim.SGD(ps, lr=0.05)  # noqa: E731
    model, opt = train(make, passes=3)
    reference, _ = train(make, passes=3, distributed=False)  # the three passes' gradients summed, not divided
    ok = bool(np.allclose(flat(model), flat(reference), rtol=1e-6, atol=1e-6))
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_one_pass_too_many_is_refused_before_it_is_summed():
    model = mlp()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters(), backward_passes_per_step=2)
    for micro in range(2):
        loss_of(model, mine(global_batch(0, micro))).backward()
    raised = False
    try:
        loss_of(model, mine(global_batch(0, 2))).backward()
    except AssertionError:
        raised = True
    opt.step()  # every rank averages what it has (on one process nothing is hooked, as in Horovod)
    assert all_ranks_agree(raised == (WORLD.Get_size() > 1))


@pytest.mark.mpi
def test_set_backward_passes_per_step():
    make = lambda ps: torch.optim.SGD(ps, lr=0.05)  # noqa: E731
    model = mlp()
    opt = hvd.DistributedOptimizer(make(model.parameters()), named_parameters=model.named_parameters())
    opt.set_backward_passes_per_step(2)
    for step in range(2):
        opt.zero_grad()
        for micro in range(2):
            loss_of(model, mine(global_batch(step, micro))).backward()
        opt.step()
    reference, _ = train(make, steps=2, passes=2, distributed=False)
    assert all_ranks_agree(opt.backward_passes_per_step == 2 and
                           bool(np.allclose(flat(model), flat(reference), rtol=1e-6, atol=1e-6)))


@pytest.mark.mpi
def test_fp16_compression_is_within_fp16_rounding():
    make = lambda ps: torch.optim.SGD(ps, lr=0.1)  # noqa: E731
    model, _ = train(make, steps=3, compression=hvd.Compression.fp16)
    reference, _ = train(make, steps=3, distributed=False)
    # Each gradient element is rounded to 11 significant bits on the wire: 2**-11 of the gradient's scale.
    err = np.abs(flat(model) - flat(reference)).max()
    assert identical_across_ranks(flat(model)) and all_ranks_agree(bool(err < 3 * 0.1 * 2 ** -11 * 3))


@pytest.mark.mpi
def test_compression_from_spec_trains():
    model = mlp()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters(),
                                   compression=hvd.Compression.from_spec("ef+int8"))
    batch = global_batch(0)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss_of(model, mine(batch)).backward()
        opt.step()
        losses.append(loss_of(model, batch).item())
    # Error feedback's state lives in one compressor per bucket of the reducer.
    per_bucket = WORLD.Get_size() == 1 or len(opt._reducer.compressors) == len(opt._reducer.buckets)
    assert identical_across_ranks(flat(model)) and all_ranks_agree(losses[-1] < 0.8 * losses[0] and per_bucket)


@pytest.mark.mpi
def test_op_sum_is_size_times_the_mean():
    outs = []
    for op in (hvd.Average, hvd.Sum):
        model = mlp()
        opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                       named_parameters=model.named_parameters(), op=op)
        loss_of(model, mine(global_batch(0))).backward()
        opt.synchronize()
        outs.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy())
        with opt.skip_synchronize():
            opt.step()
    assert all_ranks_agree(bool(np.allclose(outs[1], WORLD.Get_size() * outs[0], rtol=1e-6, atol=1e-7)))


@pytest.mark.mpi
def test_synchronize_then_clip_inside_skip_synchronize():
    model, reference = mlp(), mlp()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.5),
                                   named_parameters=model.named_parameters())
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    loss_of(model, mine(global_batch(0))).backward()
    opt.synchronize()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with opt.skip_synchronize():
            opt.step()
    loss_of(reference, global_batch(0)).backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.01)
    ref_opt.step()
    ok = not caught and bool(np.allclose(flat(model), flat(reference), rtol=1e-6, atol=1e-6))
    # Without skip_synchronize, step() after synchronize() warns (Horovod's phrase) and averages again.
    opt.zero_grad()
    loss_of(model, mine(global_batch(1))).backward()
    opt.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    ok &= len(caught) == 1 and "optimizer.step() called without optimizer.skip_synchronize()" in str(caught[0].message)
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_zero_grad_between_backward_and_step_is_refused():
    model = mlp()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters())
    loss_of(model, mine(global_batch(0))).backward()
    refused = False
    try:
        opt.zero_grad()
    except AssertionError:
        refused = True
    opt.step()
    opt.zero_grad()  # allowed after step
    cleared = all(p.grad is None for p in model.parameters())
    # On one process nothing is hooked and nothing is pending, as in Horovod.
    assert all_ranks_agree(refused == (WORLD.Get_size() > 1) and cleared)


@pytest.mark.mpi
def test_lr_scheduler_and_state_dict():
    model = mlp()
    original = torch.optim.SGD(model.parameters(), lr=0.8, momentum=0.5)
    opt = hvd.DistributedOptimizer(original, named_parameters=model.named_parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for step in range(5):
        opt.zero_grad()
        loss_of(model, mine(global_batch(step))).backward()
        opt.step()
        sched.step()
    ok = opt.param_groups[0]["lr"] == 0.8 * 0.5 ** (5 // 2) == original.param_groups[0]["lr"]
    saved = opt.state_dict()
    again = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.8, momentum=0.5),
                                     named_parameters=model.named_parameters())
    again.load_state_dict(saved)
    ok &= again.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    ok &= all(torch.equal(again.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])
              for p in model.parameters())
    ok &= isinstance(opt, torch.optim.SGD) and isinstance(opt, torch.optim.Optimizer)
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_sparse_embedding_gradients_come_back_sparse_and_averaged():
    torch.manual_seed(0)
    emb, dense = torch.nn.Embedding(10, 3, sparse=True), torch.nn.Embedding(10, 3)
    dense.weight.data.copy_(emb.weight.data)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(emb.parameters(), lr=0.1),
                                   named_parameters=emb.named_parameters())
    r, n = WORLD.Get_rank(), WORLD.Get_size()
    emb(torch.tensor([r % 10, (r + 3) % 10])).sum().backward()
    opt.synchronize()
    got = emb.weight.grad
    for k in range(n):  # the reference: the mean over ranks of every rank's dense gradient
        dense(torch.tensor([k % 10, (k + 3) % 10])).sum().div(n).backward()
    ok = got.is_sparse and torch.allclose(got.to_dense(), dense.weight.grad)
    with opt.skip_synchronize():
        opt.step()
    assert all_ranks_agree(bool(ok))


@pytest.mark.mpi
def test_two_optimizers_after_one_backward():
    """A GAN's two optimizers: both averaged from one backward, each on its own communicator."""
    gen, disc = mlp(1), torch.nn.Linear(3, 1)
    gen_opt = hvd.DistributedOptimizer(torch.optim.SGD(gen.parameters(), lr=0.1),
                                       named_parameters=gen.named_parameters())
    disc_opt = hvd.DistributedOptimizer(torch.optim.SGD(disc.parameters(), lr=0.1),
                                        named_parameters=disc.named_parameters())
    x, _ = mine(global_batch(0))
    disc(gen(x)).square().mean().backward()
    gen_opt.synchronize()
    disc_opt.synchronize()
    grads = torch.cat([p.grad.reshape(-1) for p in list(gen.parameters()) + list(disc.parameters())]).numpy()
    ok = identical_across_ranks(grads)
    for o in (gen_opt, disc_opt):
        with o.skip_synchronize():
            o.step()
    assert all_ranks_agree(ok)


def refused(error, call) -> bool:
    try:
        call()
    except error:
        return True
    return False


@pytest.mark.mpi
def test_refusals():
    model = mlp()
    sgd = lambda: torch.optim.SGD(model.parameters(), lr=0.1)  # noqa: E731
    named = list(model.named_parameters())
    dup = [("w", p) for _, p in named]
    ok = refused(ValueError, lambda: hvd.DistributedOptimizer(sgd(), named_parameters=dup))
    ok &= refused(ValueError, lambda: hvd.DistributedOptimizer(sgd(), named_parameters=named[:1]))
    ok &= refused(ValueError, lambda: hvd.DistributedOptimizer(sgd(), named_parameters=[p for _, p in named]))
    ok &= refused(ValueError, lambda: hvd.DistributedOptimizer(sgd(), op=hvd.Sum, gradient_predivide_factor=2.0))
    ok &= refused(ValueError, lambda: hvd.DistributedOptimizer(sgd(), op=hvd.Max))
    ok &= refused(ValueError, lambda: hvd.DistributedOptimizer(sgd(), groups=0))
    ok &= refused(ValueError, lambda: hvd.DistributedOptimizer(sgd(), groups=[[named[0][1], "x"]]))
    ok &= refused(ValueError, lambda: hvd.DistributedOptimizer(sgd(), groups=[[named[0][1]], [named[0][1]]]))
    ok &= refused(ValueError, lambda: hvd.DistributedOptimizer(sgd(), backward_passes_per_step=0))
    ok &= refused(ValueError, lambda: hvd.DistributedOptimizer(sgd(), compression="nonsense"))
    ok &= refused(ValueError, lambda: hvd.Compression.from_spec("topk:ratio=2"))
    ok &= refused(ValueError, lambda: hvd.DistributedOptimizer(sgd(), process_set=type("P", (), {"ranks": [0]})())
                  ) == (WORLD.Get_size() > 1)
    # Adasum is refused where it would do something: on one process Horovod's optimizer hooks nothing.
    ok &= refused(ValueError, lambda: hvd.DistributedOptimizer(sgd(), op=hvd.Adasum)) == (WORLD.Get_size() > 1)
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_groups_map_to_about_that_many_buckets():
    model = mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                       named_parameters=model.named_parameters(), num_groups=2)
    ok = any(issubclass(w.category, DeprecationWarning) for w in caught)
    ok &= WORLD.Get_size() == 1 or len(opt._reducer.buckets) in (2, 3)
    loss_of(model, mine(global_batch(0))).backward()
    opt.step()
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_gradients_are_written_into_the_buckets():
    """Zero-copy: after zero_grad(set_to_none=True), backward accumulates straight into the reducer's buckets."""
    model = mlp()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters())
    ok = True
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        loss_of(model, mine(global_batch(step))).backward()
        if WORLD.Get_size() > 1:  # on one process there is no reducer, as Horovod hooks nothing
            for p in model.parameters():
                bucket, _ = opt._reducer._where[id(p)]
                start, end = bucket.buffer.data_ptr(), bucket.buffer.data_ptr() + bucket.buffer.numel() * 4
                ok &= start <= p.grad.data_ptr() < end
        opt.step()
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_a_model_can_get_a_new_optimizer_once_the_old_one_is_dropped():
    import gc
    make = lambda ps: torch.optim.SGD(ps, lr=0.1)  # noqa: E731
    model = mlp()
    for step in range(2):  # the first optimizer: two steps, then dropped
        opt = hvd.DistributedOptimizer(make(model.parameters()), named_parameters=model.named_parameters()) \
            if step == 0 else opt
        opt.zero_grad()
        loss_of(model, mine(global_batch(step))).backward()
        opt.step()
    del opt
    gc.collect()
    opt = hvd.DistributedOptimizer(make(model.parameters()), named_parameters=model.named_parameters())
    for step in range(2, 4):  # its hooks are gone: no pass counted twice, no second reducer
        opt.zero_grad()
        loss_of(model, mine(global_batch(step))).backward()
        opt.step()
    reference, _ = train(make, steps=4, distributed=False)
    assert all_ranks_agree(bool(np.allclose(flat(model), flat(reference), rtol=1e-6, atol=1e-6)))
