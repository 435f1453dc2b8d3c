"""Top-k sparsification: the k largest magnitudes and their positions.

Payload: k indices as gaps between sorted positions (uint32, small numbers
that lz4 packs well), then the k float32 values: 8k bytes, so ratio 1% costs
2% of the float32 bytes. Use it inside ErrorFeedback, which carries what it
drops into the next step.
"""
import numpy as np

from ..checks import number, whole
from .base import Compressor, check_finite, check_size, require_finite
from .params import require


class TopK(Compressor):
    name = "topk"
    params = {"ratio": number(0, 1, above=True), "k": whole(1)}

    def __init__(self, ratio: float | None = None, k: int | None = None):
        if (ratio is None) == (k is None):
            raise ValueError("topk: give exactly one of ratio (0 < ratio <= 1) or k (>= 1)")
        require(self.name, self.params, ratio=ratio, k=k)
        self.ratio, self.k = ratio, k

    def count(self, n: int) -> int:
        """How many values are sent for ``n`` inputs: ``k``, or ``ratio * n`` rounded down (at least 1)."""
        if n == 0:
            return 0
        return min(n, self.k) if self.k is not None else max(1, min(n, int(self.ratio * n)))

    def wire_bytes(self, count: int) -> int:
        return 8 * self.count(count)  # a uint32 gap and a float32 value each

    def compress(self, x: np.ndarray):
        x = np.asarray(x, dtype=np.float32)
        require_finite(x, self.name)
        k = self.count(x.size)
        if k < x.size:
            idx = largest(np.abs(x), k)
            idx.sort()
        else:
            idx = np.arange(x.size)
        gaps = np.diff(idx, prepend=0).astype(np.uint32)
        payload = np.concatenate([gaps.view(np.uint8), x[idx].astype(np.float32).view(np.uint8)])
        return payload, x.size

    def positions(self, payload, ctx) -> np.ndarray:
        """The sent positions, checked: increasing and below ``ctx``."""
        k = self.count(ctx)
        check_size(payload, 8 * k, self.name)
        idx = np.cumsum(payload[:4 * k].view(np.uint32), dtype=np.int64)
        if k and (idx[-1] >= ctx or np.any(np.diff(idx) <= 0)):
            raise ValueError(f"topk: the payload's indices are not increasing positions below {ctx}")
        return idx

    def decompress(self, payload, ctx) -> np.ndarray:
        k = self.count(ctx)
        idx = self.positions(payload, ctx)
        out = np.zeros(ctx, dtype=np.float32)
        out[idx] = check_finite(payload[4 * k:].view(np.float32), self.name, "values")
        return out


SAMPLE = 65536


def largest(magnitude: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest values of ``magnitude`` (unordered), as argpartition gives them.

    A partition of the whole array costs 32 ms at 4M values on one core. A
    threshold from an evenly spaced sample that about 2k values pass leaves a
    few candidates to partition instead (4 ms). Every value at or above the
    threshold is a candidate, so if there are k of them the k largest are among
    them; if the sample misled, the whole array is partitioned.
    """
    n = magnitude.size
    if 64 * k <= n:
        sample = magnitude[::max(1, n // SAMPLE)]
        at = int(sample.size * (1 - 2 * k / n))
        candidates = np.flatnonzero(magnitude >= np.partition(sample, at)[at])
        if candidates.size >= k:
            return candidates[np.argpartition(magnitude[candidates], candidates.size - k)[candidates.size - k:]]
    return np.argpartition(magnitude, n - k)[n - k:]
