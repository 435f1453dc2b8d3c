"""A compressor of your own, registered without editing ringtrain: random-k sparsification.

Every rank keeps the same ``ratio`` of the positions, drawn afresh each step
from a generator seeded alike on every rank, so only the values cross the wire
(4 bytes each, no indices). The draw is unbiased only with error feedback
around it (``ef+randomk``), which carries what was dropped into the next step.

A compressor is a ``ringtrain.compression.Compressor`` subclass: ``compress``
returns ``(payload, ctx)`` (a uint8 array, and what ``decompress`` needs
besides), and its state goes through ``state_dict`` so a checkpoint resumes it.
It gathers every rank's payload (``Path.GATHERED``, the default). ``params``
declares its keyword parameters, which a spec's ``key=value`` is checked against.

    mpiexec -n 2 python -m ringtrain.examples.random_k --compression ef+randomk:ratio=0.1 --steps 20

>>> from ringtrain import compression
>>> c = compression.get("randomk:ratio=0.5")      # registered when this module was imported
>>> x = np.arange(1, 9, dtype=np.float32)
>>> payload, ctx = c.compress(x)
>>> payload.nbytes, int((c.decompress(payload, ctx) == x).sum())   # 4 values kept, as they were
(16, 4)
"""
import numpy as np

from ringtrain import compression
from ringtrain.checks import number, whole
from ringtrain.compression.base import check_finite, check_size, require_finite


class RandomK(compression.Compressor):
    name = "randomk"
    params = {"ratio": number(0, 1, above=True), "seed": whole(0, 2**63 - 1)}

    def __init__(self, ratio: float = 0.01, seed: int = 0):
        for key, value in (("ratio", ratio), ("seed", seed)):
            if not self.params[key].allows(value):
                raise ValueError(f"randomk: {key}={value!r} is not allowed — {self.params[key].allowed}")
        self.ratio = float(ratio)
        self._rng = np.random.default_rng(seed)  # the same draws on every rank: positions need not be sent

    def wire_bytes(self, count: int) -> int:
        return 4 * self._count(count)

    def _count(self, n: int) -> int:
        return min(n, max(1, int(self.ratio * n))) if n else 0

    def compress(self, x: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        require_finite(x, self.name)
        positions = np.sort(self._rng.choice(x.size, self._count(x.size), replace=False))
        return x[positions].view(np.uint8), (x.size, positions)

    def decompress(self, payload: np.ndarray, ctx) -> np.ndarray:
        size, positions = ctx  # this rank's positions are every rank's: the generators are in step
        values = check_size(payload, 4 * positions.size, self.name).view(np.float32)
        out = np.zeros(size, dtype=np.float32)
        out[positions] = check_finite(values, self.name, "values")
        return out

    def state_dict(self) -> dict:
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self._rng.bit_generator.state = state["rng"]


compression.register("randomk", RandomK)

if __name__ == "__main__":  # the ringtrain command line, with randomk known to --compression
    from ringtrain.cli import main
    raise SystemExit(main())
