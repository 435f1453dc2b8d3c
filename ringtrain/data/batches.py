"""Deterministic batches: each rank's shard of each step's global batch, from (seed, step, rank).

The token array is cut into blocks of 1 MiB; every 20th block is held out for
validation, the rest train. A step's global batch of ``world * batch`` windows is
drawn from ``seed`` and ``step`` alone, and rank ``r`` takes rows
``r*batch .. (r+1)*batch``. So N ranks at batch b see exactly what one rank sees
at batch N*b with the same seed, which makes a distributed run comparable with
a serial one, and a resumed run with an uninterrupted one.

``tokens`` is anything that slices like a uint8 array: an array, or the token
cache's TokenReader (token_reader.py), which reads each window with pread and
verifies the blocks it touches. ``fingerprint`` says what the tokens are
(fingerprint.py); checkpoints record it so that a resume can tell changed data.
"""
import numpy as np
import torch

from ..fault.errors import UsageError

BLOCK = 1 << 20
VAL_EVERY = 20


class Batches:
    """Windows of ``context + 1`` tokens: inputs are the first ``context``, targets the last.

    >>> b = Batches(np.arange(300000, dtype=np.uint8), context=8, batch=2, seed=0, rank=0, world=1)
    >>> x, y = b.train(step=0); x.shape, bool((x[:, 1:] == y[:, :-1]).all())
    (torch.Size([2, 8]), True)
    """

    steps_per_epoch = None  # windows are drawn afresh every step: there are no epochs

    def __init__(self, tokens: np.ndarray, *, context: int, batch: int, seed: int, rank: int, world: int,
                 eval_windows: int = 64, source: str = "the corpus", fingerprint: dict | None = None):
        if batch < 1 or context < 1:
            raise ValueError(f"batch and context must be >= 1, got batch={batch}, context={context}")
        self.tokens, self.context, self.batch = tokens, context, batch
        self.seed, self.rank, self.world = seed, rank, world
        self.eval_windows, self.source, self.fingerprint = eval_windows, source, fingerprint
        n = len(tokens)
        if n < 2 * (context + 1):
            raise UsageError(f"--data: the corpus has {n} tokens — it needs at least {2 * (context + 1)} "
                             f"for context {context}; give more text or a smaller --context")
        starts = np.arange(0, n, BLOCK)
        lengths = np.minimum(BLOCK, n - starts)
        usable = lengths > context + 1
        is_val = (np.arange(len(starts)) % VAL_EVERY) == VAL_EVERY - 1
        # A corpus too small for a held-out block holds out its last tenth instead.
        if not (usable & is_val).any() or not (usable & ~is_val).any():
            cut = int(n * 0.9)
            starts, lengths = np.array([0, cut]), np.array([cut, n - cut])
            is_val = np.array([False, True])
            usable = lengths > context + 1
            if not usable.all():
                raise UsageError(f"--data: the corpus has {n} tokens, too few for context {context} "
                                 "with a held-out validation split — give more text or a smaller --context")
        self._train = (starts[usable & ~is_val], lengths[usable & ~is_val])
        self._val = (starts[usable & is_val], lengths[usable & is_val])

    def _windows(self, blocks, rng, count):
        starts, lengths = blocks
        pick = rng.integers(0, len(starts), size=count)
        offsets = starts[pick] + (rng.random(count) * (lengths[pick] - self.context - 1)).astype(np.int64)
        rows = np.stack([self.tokens[o:o + self.context + 1] for o in offsets]).astype(np.int64)
        x = torch.from_numpy(rows[:, :-1].copy())
        y = torch.from_numpy(rows[:, 1:].copy())
        return x, y

    def train(self, step: int):
        """This rank's shard of the global batch for ``step``."""
        rng = np.random.default_rng([self.seed, step])
        x, y = self._windows(self._train, rng, self.world * self.batch)
        lo = self.rank * self.batch
        return x[lo:lo + self.batch], y[lo:lo + self.batch]

    def validation(self, count: int):
        """This rank's shard of a fixed held-out set of ``count`` windows (count split over ranks)."""
        rng = np.random.default_rng([self.seed, 1 << 40])
        x, y = self._windows(self._val, rng, count)
        return x[self.rank::self.world], y[self.rank::self.world]

    def held_out(self):
        """(window count, (x, y)) for this rank's share of ``eval_windows`` held-out windows, as one batch."""
        x, y = self.validation(self.eval_windows)
        if len(x):
            yield len(x), (x, y)

    def describe(self) -> str:
        return f"{len(self.tokens):,} byte tokens from {self.source}"
