"""1-bit sign compression: one bit per element and one float32 scale per chunk.

The scale is the chunk's mean |x|, so decompress(compress(x)) keeps each
chunk's L1 norm. Payload: the scales, then the sign bits packed 8 per byte,
about 1/32 of the float32 bytes. It needs error feedback to converge, which
``get("onebit")`` adds. DeepSpeed's 1-bit Adam compresses twice (workers to a
per-chunk server and back, each with its own residual); this compressor has
every rank gather every rank's signs instead, which costs more bytes at large
world sizes and has a single residual. ``--optimizer onebit-adam`` uses the
two-stage scheme (onebit_allreduce.py).
"""
import numpy as np
import torch

from ..checks import multiple
from .base import Compressor, check_scales, check_size, require_finite
from .params import require


# Row b: the 8 signs (+1 for a set bit, -1 for a clear one) of byte b, most significant bit first.
_SIGNS = torch.from_numpy(np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32) * 2 - 1)


class OneBit(Compressor):
    name = "onebit"
    params = {"chunk": multiple(8, 8)}

    def __init__(self, chunk: int = 1024):
        require(self.name, self.params, chunk=chunk)
        self.chunk = int(chunk)
        self._magnitudes = torch.empty(0)  # |x|, kept between calls: fresh pages cost a fault per 4 KiB
        self._positive = np.empty(0, dtype=bool)

    def _layout(self, count: int) -> tuple[int, int]:
        nchunks = -(-count // self.chunk)
        return nchunks, -(-count // 8)

    def wire_bytes(self, count: int) -> int:
        nchunks, nbytes = self._layout(count)
        return 4 * nchunks + nbytes

    def compress(self, x: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = x.size
        nchunks, nbytes = self._layout(n)
        payload = np.empty(4 * nchunks + nbytes, dtype=np.uint8)
        full = n // self.chunk
        if self._magnitudes.numel() != n:
            self._magnitudes, self._positive = torch.empty(n), np.empty(n, dtype=bool)
        scales = torch.from_numpy(payload[:4 * nchunks].view(np.float32))
        # Mean |x| per chunk: abs into a kept buffer, then a row sum, twice as
        # fast as torch's L1 vector_norm on one core. The last chunk may be short.
        magnitudes = torch.abs(torch.from_numpy(x), out=self._magnitudes)
        torch.sum(magnitudes[:full * self.chunk].view(full, self.chunk), dim=1, out=scales[:full])
        scales[:full] /= self.chunk
        if nchunks > full:
            scales[full] = magnitudes[full * self.chunk:].mean()
        require_finite(scales, self.name)  # a NaN or inf anywhere reaches its chunk's scale
        payload[4 * nchunks:] = np.packbits(np.greater_equal(x, 0, out=self._positive))
        return payload, n

    def decompress(self, payload, ctx) -> np.ndarray:
        nchunks, nbytes = self._layout(ctx)
        check_size(payload, 4 * nchunks + nbytes, self.name)
        scales = check_scales(payload[:4 * nchunks].view(np.float32), self.name)
        # One table lookup per byte gives its 8 signs as floats, straight into
        # the output: far cheaper than unpacking bits and converting them
        # (torch's index_select: 3x numpy's take here).
        out = np.empty(nchunks * self.chunk, dtype=np.float32)
        rows = torch.from_numpy(out[:8 * nbytes]).view(nbytes, 8)
        torch.index_select(_SIGNS, 0, torch.from_numpy(payload[4 * nchunks:]).int(), out=rows)
        out[ctx:] = 0
        torch.from_numpy(out).view(nchunks, self.chunk).mul_(torch.from_numpy(scales)[:, None])
        return out[:ctx]
