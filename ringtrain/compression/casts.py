"""float16 and bfloat16 on the wire: half the bytes of float32.

Their payloads can be summed, so ``allreduce_mean`` runs a ring whose every hop
carries 16-bit segments, accumulating in float32 at each rank (collectives/codec_ring.py).
"""
import numpy as np
import torch

from .base import check_finite, check_size, require_finite
from .ring_codec import RingCodec


class Cast16(RingCodec):
    """Round to a 16-bit float type (``"float16"`` or ``"bfloat16"``) for the wire."""

    def __init__(self, dtype: str):
        if dtype not in ("float16", "bfloat16"):
            raise ValueError(f"Cast16: dtype must be float16 or bfloat16, got {dtype!r}")
        self.dtype = dtype
        self.name = "fp16" if dtype == "float16" else "bf16"
        self._torch_dtype = torch.float16 if dtype == "float16" else torch.bfloat16

    wire_dtype = np.uint16

    def encode(self, x: np.ndarray, lo: int, hi: int, summed: int, out: np.ndarray) -> None:
        """float32 ``x`` into the uint16 array ``out`` (the 16-bit bit patterns), rounding to nearest even."""
        # torch's casts are vectorised and follow torch's thread setting; numpy's are several times slower.
        torch.from_numpy(out.view(np.int16)).view(self._torch_dtype).copy_(torch.from_numpy(x))

    def decode(self, bits: np.ndarray, lo: int, hi: int, summed: int, out: np.ndarray) -> np.ndarray:
        torch.from_numpy(out).copy_(torch.from_numpy(bits.view(np.int16)).view(self._torch_dtype))
        return out

    def wire_bytes(self, count: int) -> int:
        return 2 * count

    def compress(self, x: np.ndarray):
        bits = np.empty(x.size, dtype=np.uint16)
        self.encode(np.ascontiguousarray(x, dtype=np.float32), 0, x.size, 1, bits)
        # After the cast: a finite float32 beyond float16's 65504 becomes inf here, and is refused too.
        require_finite(torch.from_numpy(bits.view(np.int16)).view(self._torch_dtype), self.name)
        return bits.view(np.uint8), x.size

    def decompress(self, payload, ctx) -> np.ndarray:
        bits = check_size(payload, 2 * ctx, self.name).view(np.uint16)
        out = self.decode(bits, 0, ctx, 1, np.empty(ctx, dtype=np.float32))
        return check_finite(out, self.name, "values")
