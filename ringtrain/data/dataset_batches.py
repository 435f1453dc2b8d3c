"""Batches from a map-style dataset: each rank's micro-batch for each micro-step, and its share of validation.

The training side is ShardedSampler's indices, fetched and collated. The
validation side gives rank ``r`` the samples ``r, r + world, r + 2*world, ...``
of the validation set in batches of ``batch``, each with its sample count, so
that the mean over all ranks weighs every sample once (validation.py).

>>> import torch
>>> data = [(torch.tensor([float(i)]), torch.tensor(i % 2)) for i in range(10)]
>>> b = DatasetBatches(data, data, batch=4, seed=0, rank=1, world=2, drop_last=False)
>>> x, y = b.train(0); x.shape, y.shape
(torch.Size([4, 1]), torch.Size([4]))
>>> [count for count, _ in b.held_out()]     # samples 1, 3, 5, 7, 9 of the validation set
[4, 1]
"""
from typing import Any, Callable, Iterator

from torch.utils.data import default_collate

from .sampler import ShardedSampler


class DatasetBatches:
    fingerprint = None  # the task's datasets are the caller's objects: nothing to fingerprint

    def __init__(self, train_data, val_data=None, *, batch: int, seed: int, rank: int, world: int,
                 drop_last: bool, collate_fn: Callable[[list], Any] | None = None):
        self.train_data, self.val_data = train_data, val_data
        self.batch, self.rank, self.world = batch, rank, world
        self.collate = collate_fn or default_collate
        self.sampler = ShardedSampler(len(train_data), batch=batch, world=world, rank=rank, seed=seed,
                                      drop_last=drop_last)
        self.steps_per_epoch = self.sampler.steps_per_epoch

    def train(self, step: int):
        """This rank's collated micro-batch for micro-step ``step``."""
        return self.collate([self.train_data[i] for i in self.sampler.indices(step)])

    def held_out(self) -> Iterator[tuple[int, Any]]:
        """(sample count, batch) for this rank's share of the validation set; nothing without one."""
        if self.val_data is None:
            return
        mine = range(self.rank, len(self.val_data), self.world)
        for lo in range(0, len(mine), self.batch):
            part = mine[lo:lo + self.batch]
            yield len(part), self.collate([self.val_data[i] for i in part])

    def describe(self) -> str:
        val = f", {len(self.val_data):,} for validation" if self.val_data is not None else ", no validation set"
        return (f"{len(self.train_data):,} training samples ({self.steps_per_epoch:,} micro-steps per epoch)"
                + val)
