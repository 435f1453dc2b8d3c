"""ShardedSampler and DatasetBatches: every rank's share of every step, from (seed, step) alone."""
import collections

import numpy as np
import pytest
import torch

from ringtrain.data import DatasetBatches, Prefetcher, ShardedSampler, WorkerPrefetcher
from ringtrain.fault.errors import UsageError


def shards(size, batch, world, step, seed=3, drop_last=False):
    return [ShardedSampler(size, batch=batch, world=world, rank=r, seed=seed, drop_last=drop_last).indices(step)
            for r in range(world)]


@pytest.mark.parametrize("world,batch", [(1, 4), (2, 3), (3, 2), (4, 5)])
@pytest.mark.parametrize("step", [0, 1, 7, 20])
def test_n_ranks_at_b_take_what_one_rank_takes_at_n_times_b(world, batch, step):
    together = sum(shards(50, batch, world, step), [])
    assert together == shards(50, world * batch, 1, step)[0]


@pytest.mark.parametrize("size,world,batch", [(50, 4, 3), (48, 4, 3), (7, 2, 2), (5, 3, 4)])
def test_padding_shows_every_sample_and_repeats_only_the_epochs_first(size, world, batch):
    s = ShardedSampler(size, batch=batch, world=world, rank=0, seed=1, drop_last=False)
    g = world * batch
    assert s.steps_per_epoch == -(-size // g)
    for epoch in range(3):
        taken = sum((sum(shards(size, batch, world, epoch * s.steps_per_epoch + i, seed=1), [])
                     for i in range(s.steps_per_epoch)), [])
        counts = collections.Counter(taken)
        assert set(counts) == set(range(size))  # every sample, every epoch
        extra = s.steps_per_epoch * g - size
        order = s.order(epoch)
        # The padding is the epoch's order from its start, wrapped as often as needed.
        assert taken[size:] == np.resize(order, extra).tolist()
        assert sum(counts.values()) == size + extra


@pytest.mark.parametrize("size,world,batch", [(50, 4, 3), (48, 4, 3), (9, 2, 2)])
def test_drop_last_leaves_out_the_short_batch(size, world, batch):
    s = ShardedSampler(size, batch=batch, world=world, rank=0, seed=1, drop_last=True)
    g = world * batch
    assert s.steps_per_epoch == size // g
    taken = sum((sum(shards(size, batch, world, i, seed=1, drop_last=True), []) for i in range(s.steps_per_epoch)), [])
    assert len(taken) == len(set(taken)) == s.steps_per_epoch * g
    assert taken == s.order(0)[:len(taken)].tolist()


def test_each_epoch_has_its_own_order_from_the_seed():
    s = ShardedSampler(40, batch=4, world=2, rank=1, seed=5, drop_last=False)
    assert not np.array_equal(s.order(0), s.order(1))
    assert np.array_equal(s.order(1), np.random.default_rng([5, 1]).permutation(40))
    again = ShardedSampler(40, batch=4, world=2, rank=1, seed=5, drop_last=False)
    assert [again.indices(k) for k in range(12)] == [s.indices(k) for k in range(12)]
    other = ShardedSampler(40, batch=4, world=2, rank=1, seed=6, drop_last=False)
    assert [other.indices(k) for k in range(12)] != [s.indices(k) for k in range(12)]
    # Resuming is asking for the step: no state carried over, in any order.
    assert [s.indices(k) for k in (11, 3, 7)] == [again.indices(k) for k in (11, 3, 7)]


def test_a_dataset_smaller_than_a_global_batch():
    with pytest.raises(UsageError, match=r"--last-batch drop: .* 5 samples, fewer than one global batch .* 8"):
        ShardedSampler(5, batch=4, world=2, rank=0, seed=0, drop_last=True)
    with pytest.raises(UsageError, match="empty"):
        ShardedSampler(0, batch=1, world=1, rank=0, seed=0, drop_last=False)


def _data(n):
    return torch.utils.data.TensorDataset(torch.arange(n, dtype=torch.float32).reshape(n, 1),
                                          torch.arange(n) % 3)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_validation_shares_cover_the_set_once(world):
    val = _data(23)
    seen = []
    for r in range(world):
        b = DatasetBatches(_data(10), val, batch=4, seed=0, rank=r, world=world, drop_last=False)
        for count, (x, _) in b.held_out():
            assert count == len(x) <= 4
            seen += x.reshape(-1).int().tolist()
    assert sorted(seen) == list(range(23))


def test_collate_fn_and_samples():
    b = DatasetBatches(_data(10), batch=3, seed=2, rank=0, world=1, drop_last=False,
                       collate_fn=lambda samples: {"n": len(samples), "x": torch.stack([s[0] for s in samples])})
    batch = b.train(4)
    assert batch["n"] == 3
    assert batch["x"].reshape(-1).int().tolist() == b.sampler.indices(4)
    assert list(DatasetBatches(_data(10), batch=3, seed=2, rank=0, world=1, drop_last=False).held_out()) == []


@pytest.mark.parametrize("workers", [0, 2])
def test_loaders_give_exactly_the_sources_batches(workers):
    b = DatasetBatches(_data(37), batch=4, seed=7, rank=1, world=2, drop_last=False)
    loader = (WorkerPrefetcher(b, 3, 30, workers=workers, prefetch=2) if workers else Prefetcher(b, 3))
    try:
        got = [loader.get(step) for step in range(3, 30)]
    finally:
        loader.close()
    for step, (x, y) in zip(range(3, 30), got):
        ex, ey = b.train(step)
        assert torch.equal(x, ex) and torch.equal(y, ey)
