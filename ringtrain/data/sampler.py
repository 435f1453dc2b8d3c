"""Which samples each rank takes at each micro-step of a map-style dataset: a pure function of (seed, step).

Epoch ``e`` visits the dataset in the order of a permutation drawn from
``(seed, e)``. Each micro-step takes the next ``world * batch`` indices of that
order (the global batch), and rank ``r`` takes positions ``r*batch ..
(r+1)*batch`` of it: so N ranks at batch b see exactly what one rank sees at
batch N*b, as with the byte corpus (batches.py). Nothing is stored: a resumed
run finds its place from the step alone, mid-epoch included.

The last global batch of an epoch is short unless the dataset's size divides
evenly. ``drop_last=False`` pads it with the epoch's first indices (every
sample is seen, a few twice), as torch's DistributedSampler does;
``drop_last=True`` leaves those samples out of the epoch. Either way every rank
takes the same number of samples at every step, which the collectives need.

>>> s = ShardedSampler(10, batch=2, world=2, rank=0, seed=0, drop_last=False)
>>> s.steps_per_epoch                        # ceil(10 / 4)
3
>>> s.indices(2) == s.order(0)[8:10].tolist()   # rank 0: the epoch's last 2; rank 1 gets padding
True
"""
import numpy as np

from ..fault.errors import UsageError


class ShardedSampler:
    """``indices(step)``: rank ``rank``'s ``batch`` dataset indices for micro-step ``step``."""

    def __init__(self, size: int, *, batch: int, world: int, rank: int, seed: int, drop_last: bool):
        if size < 1:
            raise UsageError("the training dataset is empty — give a dataset with at least one sample")
        self.size, self.batch, self.world, self.rank, self.seed = size, batch, world, rank, seed
        self.global_batch = world * batch
        if drop_last and size < self.global_batch:
            raise UsageError(f"--last-batch drop: the training dataset has {size} samples, fewer than one global "
                             f"batch of {world} ranks x --batch-size {batch} = {self.global_batch} — lower "
                             "--batch-size, or use --last-batch pad")
        self.steps_per_epoch = size // self.global_batch if drop_last else -(-size // self.global_batch)
        self._cached = (None, None)

    def order(self, epoch: int) -> np.ndarray:
        """The dataset's order in ``epoch``; the same on every rank."""
        if self._cached[0] != epoch:  # steps walk through an epoch in order: draw each permutation once
            self._cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size))
        return self._cached[1]

    def epoch(self, step: int) -> float:
        """Epochs completed by the start of micro-step ``step`` (fractional)."""
        return step / self.steps_per_epoch

    def indices(self, step: int) -> list[int]:
        epoch, i = divmod(step, self.steps_per_epoch)
        order = self.order(epoch)
        take = order[i * self.global_batch:(i + 1) * self.global_batch]
        if len(take) < self.global_batch:
            # Padding from the epoch's start, repeated if the dataset is smaller than the global batch.
            take = np.concatenate([take, np.resize(order, self.global_batch - len(take))])
        return take[self.rank * self.batch:(self.rank + 1) * self.batch].tolist()
