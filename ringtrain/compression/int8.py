"""int8 with one float32 scale per segment: about a quarter of the float32 bytes.

Each segment of ``segment`` elements is scaled by ``max|x| / 127`` and rounded
to int8, to nearest or, with ``stochastic=True``, up or down with the
probabilities that make the rounding unbiased (E[decode] = x). Payload: the
scales (float32), then the int8 values.
"""
import numpy as np

from .base import Compressor, check_size


class Int8(Compressor):
    name = "int8"

    def __init__(self, segment: int = 512, stochastic: bool = False, seed: int = 0):
        if segment < 1:
            raise ValueError(f"int8: segment must be >= 1, got {segment}")
        self.segment, self.stochastic = int(segment), bool(stochastic)
        self._rng = np.random.default_rng(seed)

    def _layout(self, count: int) -> int:
        return -(-count // self.segment)

    def compress(self, x: np.ndarray):
        x = np.asarray(x, dtype=np.float32)
        nseg = self._layout(x.size)
        padded = np.zeros(nseg * self.segment, dtype=np.float32)
        padded[:x.size] = x
        rows = padded.reshape(nseg, self.segment)
        scales = np.abs(rows).max(axis=1) / 127.0
        safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
        scaled = rows / safe[:, None]
        if self.stochastic:
            # floor(v + u), u ~ U[0, 1): rounds up with probability frac(v), so unbiased.
            q = np.floor(scaled + self._rng.random(scaled.shape, dtype=np.float32))
        else:
            q = np.rint(scaled)
        q = np.clip(q, -127, 127).astype(np.int8).reshape(-1)[:x.size]
        payload = np.concatenate([scales.astype(np.float32).view(np.uint8), q.view(np.uint8)])
        return payload, x.size

    def decompress(self, payload, ctx) -> np.ndarray:
        nseg = self._layout(ctx)
        check_size(payload, 4 * nseg + ctx, self.name)
        scales = payload[:4 * nseg].view(np.float32)
        q = payload[4 * nseg:].view(np.int8).astype(np.float32)
        return q * np.repeat(scales, self.segment)[:ctx]

    def state_dict(self) -> dict:
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self._rng.bit_generator.state = state["rng"]
