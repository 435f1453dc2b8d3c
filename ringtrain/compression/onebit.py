"""1-bit sign compression: one bit per element and one float32 scale per chunk.

The scale is the chunk's mean |x|, so decompress(compress(x)) keeps each
chunk's L1 norm. Payload: the scales, then the sign bits packed 8 per byte,
about 1/32 of the float32 bytes. It needs error feedback to converge, which
``get("onebit")`` adds. DeepSpeed's 1-bit Adam compresses twice (workers to a
per-chunk server and back, each with its own residual); here every rank
gathers every rank's signs instead, which costs more bytes at large world
sizes and has a single residual.
"""
import numpy as np

from .base import Compressor, check_size


class OneBit(Compressor):
    name = "onebit"

    def __init__(self, chunk: int = 1024):
        if chunk < 8 or chunk % 8:
            raise ValueError(f"onebit: chunk must be a multiple of 8, at least 8; got {chunk}")
        self.chunk = int(chunk)

    def _layout(self, count: int) -> tuple[int, int]:
        nchunks = -(-count // self.chunk)
        return nchunks, -(-count // 8)

    def compress(self, x: np.ndarray):
        x = np.asarray(x, dtype=np.float32)
        nchunks, nbytes = self._layout(x.size)
        padded = np.zeros(nchunks * self.chunk, dtype=np.float32)
        padded[:x.size] = x
        rows = padded.reshape(nchunks, self.chunk)
        # Mean |x| over the chunk's real elements (the last chunk may be short).
        counts = np.full(nchunks, self.chunk, dtype=np.float32)
        if nchunks:
            counts[-1] = x.size - (nchunks - 1) * self.chunk
        scales = (np.abs(rows).sum(axis=1) / counts).astype(np.float32)
        bits = np.packbits(x >= 0)
        return np.concatenate([scales.view(np.uint8), bits]), x.size

    def decompress(self, payload, ctx) -> np.ndarray:
        nchunks, nbytes = self._layout(ctx)
        check_size(payload, 4 * nchunks + nbytes, self.name)
        scales = payload[:4 * nchunks].view(np.float32)
        signs = np.unpackbits(payload[4 * nchunks:], count=ctx).astype(np.float32) * 2 - 1
        return signs * np.repeat(scales, self.chunk)[:ctx]
