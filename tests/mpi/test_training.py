"""Equivalence tests that define the trainer's correctness.

- N ranks at batch b equal one rank at batch N*b (SGD, same seed) within 1e-6 relative;
- parameters are bitwise identical on every rank after training;
- the averaged gradient equals torch DDP's on gloo within 1e-6;
- unused parameters and mismatched models end with an answer, not a hang.
"""
import os

import numpy as np
import pytest
import torch
from mpi4py import MPI

import ringtrain
from ringtrain.data import Batches, open_tokens
from ringtrain.train import TrainConfig, train
from ringtrain.train.model_factory import build_task
from tests.helpers import all_ranks_agree, identical_across_ranks

WORLD = MPI.COMM_WORLD
TINY = dict(layers=1, heads=2, width=32, context=16, eval_windows=8, sample_tokens=0, log_every=1000,
            eval_every=0, warmup=0)


@pytest.fixture
def corpus(mpi_tmp_path, monkeypatch):
    """A small text file every rank can read, in the shared temporary directory, with a token cache beside it."""
    path = mpi_tmp_path / "text.txt"
    if WORLD.Get_rank() == 0:
        rng = np.random.default_rng(0)
        words = ["ring", "allreduce", "gradient", "bucket", "rank", "segment", "chunk", "mpi"]
        path.write_text(" ".join(rng.choice(words, size=60_000)))
    monkeypatch.setenv("RINGTRAIN_CACHE", str(mpi_tmp_path / "cache"))  # not the user's cache, one per test
    WORLD.Barrier()  # written before any rank reads it
    return str(path)


def out_dir(tmp_path):
    return str(tmp_path / f"rank{WORLD.Get_rank()}")


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.mpi
@pytest.mark.parametrize("accumulate", [1, 2])
def test_n_ranks_at_batch_b_equal_one_rank_at_batch_nb(corpus, tmp_path, accumulate):
    n = WORLD.Get_size()
    common = dict(TINY, data=corpus, steps=4, optimizer="sgd", lr=0.5, grad_clip=0.0, accumulate=accumulate,
                  out_dir=out_dir(tmp_path))
    distributed = train(TrainConfig(batch_size=2, **common))
    serial = train(TrainConfig(batch_size=2 * n, **common), comm=MPI.COMM_SELF)
    worst = 0.0
    for a, b in zip(distributed["model"].parameters(), serial["model"].parameters()):
        worst = max(worst, float((a - b).detach().norm() / b.detach().norm()))
    same_losses = np.allclose(distributed["losses"], serial["losses"], rtol=1e-5)
    assert all_ranks_agree(worst <= 1e-6), f"largest relative difference {worst:.2e}"
    assert all_ranks_agree(same_losses)


@pytest.mark.mpi
def test_parameters_are_bitwise_identical_on_every_rank(corpus, tmp_path):
    result = train(TrainConfig(**TINY, data=corpus, steps=5, batch_size=3, out_dir=out_dir(tmp_path)))
    assert identical_across_ranks(flat_params(result["model"]).numpy())
    assert all_ranks_agree(result["end_loss"] < result["start_loss"])


@pytest.mark.mpi
def test_averaged_gradients_equal_ddp_on_gloo(corpus):
    import torch.distributed as dist

    from ringtrain.bench.ddp_peer import init_gloo
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    cfg = TrainConfig(**TINY, data=corpus, batch_size=4)
    tokens = open_tokens(corpus, WORLD)
    x, y = Batches(tokens.tokens, context=cfg.context, batch=4, seed=cfg.seed, rank=r, world=n).train(0)
    # The peer: DistributedDataParallel over gloo (TCP on loopback).
    init_gloo(WORLD)
    try:
        peer = build_task(cfg).model
        ddp = torch.nn.parallel.DistributedDataParallel(peer)
        _, loss = ddp(x, y)
        loss.backward()
        expected = [p.grad.clone() for p in peer.parameters()]
    finally:
        dist.destroy_process_group()
    task = build_task(cfg)
    mine, loss_fn = task.model, task.loss_fn
    reducer = ringtrain.GradientReducer(mine)
    loss_fn(mine, x, y).backward()
    reducer.synchronize()
    reducer.close()
    worst = max(float((p.grad - e).abs().max() / (e.abs().max() + 1e-30))
                for p, e in zip(mine.parameters(), expected))
    assert all_ranks_agree(worst <= 1e-6), f"largest difference from DDP, relative to the largest entry: {worst:.2e}"


class TwoBranches(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.used = torch.nn.Linear(4, 1)
        self.sometimes = torch.nn.Linear(4, 1)

    def forward(self, x, branch: bool):
        return self.used(x) + (self.sometimes(x) if branch else 0)


@pytest.mark.mpi
def test_unused_parameters_do_not_hang_and_stay_none_where_nobody_used_them():
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    torch.manual_seed(0)
    model = TwoBranches()
    reducer = ringtrain.GradientReducer(model, bucket_cap_mb=1e-5)  # one bucket per parameter
    x = torch.ones(2, 4)
    # Only rank 0 uses the second branch, so the others never fill its buckets.
    model(x, branch=(r == 0)).sum().backward()
    reducer.synchronize()
    # d/dw of sum(w.x + b) over 2 rows of ones: 2 per weight, 2 for the bias; averaged over n ranks.
    ok = torch.equal(model.sometimes.weight.grad, torch.full((1, 4), 2.0 / n))
    ok = ok and torch.equal(model.used.bias.grad, torch.full((1,), 2.0))
    # A second step where nobody uses the branch: no hang, and no gradient at
    # all, as in a single-process run, so optimizers skip the parameter.
    model.zero_grad(set_to_none=True)
    model(x, branch=False).sum().backward()
    reducer.synchronize()
    ok = ok and model.sometimes.weight.grad is None and torch.equal(model.used.bias.grad, torch.full((1,), 2.0))
    reducer.close()
    assert all_ranks_agree(ok)


@pytest.mark.mpi(min_size=2)
def test_different_models_on_different_ranks_raise_everywhere():
    width = 8 if WORLD.Get_rank() == 0 else 9
    with pytest.raises(ringtrain.CollectiveMismatchError, match="model layout"):
        ringtrain.GradientReducer(torch.nn.Linear(width, 2))


@pytest.mark.mpi
def test_torch_threads_split_the_node_cores():
    from ringtrain.train.threads import set_torch_threads
    threads = set_torch_threads(WORLD)
    expected = int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, len(os.sched_getaffinity(0)) // WORLD.Get_size())
    assert all_ranks_agree(threads == expected == torch.get_num_threads())


@pytest.mark.mpi(min_size=2)
def test_the_ddp_peer_accumulates_as_the_trainer_does(corpus, tmp_path):
    import torch.distributed as dist

    from ringtrain.bench.ddp_peer import init_gloo, train_ddp
    cfg = TrainConfig(**TINY, data=corpus, steps=3, batch_size=2, accumulate=2, optimizer="sgd", grad_clip=0.0,
                      out_dir=out_dir(tmp_path))
    ours = train(cfg)["losses"]
    init_gloo(WORLD)
    try:
        theirs = train_ddp(cfg, WORLD)["losses"]
    finally:
        dist.destroy_process_group()
    assert all_ranks_agree(bool(np.allclose(ours, theirs, rtol=1e-5))), (ours, theirs)


@pytest.mark.mpi(min_size=2)
def test_ddp_on_the_ringtrain_backend_reaches_the_losses_of_ddp_on_gloo(corpus, tmp_path):
    import torch.distributed as dist

    from ringtrain.bench.ddp_peer import init_groups, train_ddp
    cfg = TrainConfig(**TINY, data=corpus, steps=4, batch_size=2, optimizer="sgd", grad_clip=0.0,
                      bucket_cap_mb=0.001, out_dir=out_dir(tmp_path))  # several buckets: they overlap backward
    groups = init_groups(WORLD, ringtrain=True)
    try:
        assert dist.get_backend() == "ringtrain" and dist.get_backend(groups["gloo"]) == "gloo"
        gloo = train_ddp(cfg, WORLD, group=groups["gloo"])["losses"]
        ours = train_ddp(cfg, WORLD, group=groups["ringtrain"])["losses"]
        hooked = train_ddp(cfg, WORLD, group=groups["ringtrain"], comm_hook="ef+int8")["losses"]
        try:  # ringtrain's hook on gloo's group is refused before DDP is built
            train_ddp(cfg, WORLD, group=groups["gloo"], comm_hook="ef+int8")
            refused = ""
        except ValueError as e:
            refused = str(e)
    finally:
        dist.destroy_process_group()
    same = bool(np.allclose(ours, gloo, rtol=1e-5, atol=0))
    # int8 with error feedback moves the losses a little, never far.
    near = bool(np.allclose(hooked, gloo, rtol=0.05)) and hooked != gloo
    assert all_ranks_agree(same and near and "comm_hook='ef+int8'" in refused and "'gloo'" in refused), \
        (gloo, ours, hooked, refused)
