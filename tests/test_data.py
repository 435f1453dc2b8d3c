"""Batches and corpus: the properties the equivalence tests and resume rely on."""
import numpy as np
import pytest
import torch

from ringtrain.data import Batches, default_corpus_files
from ringtrain.data.batches import BLOCK, VAL_EVERY
from ringtrain.data.loader import Prefetcher

TOKENS = (np.arange(5 * BLOCK * VAL_EVERY // 4) * 7919 % 251).astype(np.uint8)


def test_n_shards_at_b_concatenate_to_one_batch_at_nb():
    n, b = 3, 4
    whole = Batches(TOKENS, context=32, batch=n * b, seed=9, rank=0, world=1).train(step=5)
    shards = [Batches(TOKENS, context=32, batch=b, seed=9, rank=r, world=n).train(step=5) for r in range(n)]
    assert torch.equal(torch.cat([s[0] for s in shards]), whole[0])
    assert torch.equal(torch.cat([s[1] for s in shards]), whole[1])


def test_batches_depend_only_on_seed_and_step():
    a = Batches(TOKENS, context=16, batch=2, seed=1, rank=0, world=1)
    b = Batches(TOKENS, context=16, batch=2, seed=1, rank=0, world=1)
    assert torch.equal(a.train(3)[0], b.train(3)[0])
    assert not torch.equal(a.train(3)[0], a.train(4)[0])
    assert not torch.equal(a.train(3)[0], Batches(TOKENS, context=16, batch=2, seed=2, rank=0, world=1).train(3)[0])


def test_targets_are_inputs_shifted_by_one():
    x, y = Batches(TOKENS, context=16, batch=4, seed=0, rank=0, world=1).train(0)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_validation_windows_come_from_held_out_blocks_only():
    b = Batches(TOKENS, context=16, batch=4, seed=0, rank=0, world=1)
    train_starts, _ = b._train
    val_starts, _ = b._val
    assert set(train_starts // BLOCK).isdisjoint(val_starts // BLOCK)
    assert all((s // BLOCK) % VAL_EVERY == VAL_EVERY - 1 for s in val_starts)


def test_a_small_corpus_holds_out_its_last_tenth():
    b = Batches(np.zeros(1000, np.uint8), context=8, batch=2, seed=0, rank=0, world=1)
    assert list(b._val[0]) == [900]


def test_too_small_a_corpus_is_refused():
    with pytest.raises(ValueError, match="too few for context 64"):
        Batches(np.zeros(200, np.uint8), context=64, batch=2, seed=0, rank=0, world=1)


def test_prefetcher_returns_the_requested_step():
    b = Batches(TOKENS, context=16, batch=2, seed=0, rank=0, world=1)
    p = Prefetcher(b, first_step=0)
    try:
        assert torch.equal(p.get(0)[0], b.train(0)[0])
        assert torch.equal(p.get(1)[0], b.train(1)[0])
        assert torch.equal(p.get(7)[0], b.train(7)[0])  # a jump (resume) is served too
    finally:
        p.close()


def test_default_corpus_is_the_sorted_stdlib_sources():
    files = default_corpus_files()
    assert len(files) > 500
    assert all(f.suffix == ".py" and "site-packages" not in f.parts for f in files)
    assert any(f.name == "os.py" for f in files)
