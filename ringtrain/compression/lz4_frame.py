"""lz4 on the wire: lossless, around any other compressor's payload.

The inner compressor's payload size is known from the input size, so the
block is decompressed with exactly that bound: a corrupted or truncated frame
raises ValueError instead of crashing or allocating without limit. On raw
float32 gradients lz4 rarely gains anything; after int8 or top-k it can.
"""
import lz4.block
import numpy as np

from .base import Compressor


class LZ4(Compressor):
    def __init__(self, inner: Compressor | None = None):
        self.inner = inner if inner is not None else Compressor()
        self.name = f"{self.inner.name}+lz4"

    @property
    def layered(self) -> bool:
        return self.inner.layered

    def set_layout(self, segments) -> None:
        self.inner.set_layout(segments)

    def wire_bytes(self, count: int) -> None:
        return None  # what lz4 saves depends on the data

    def compress(self, x):
        payload, ctx = self.inner.compress(x)
        packed = lz4.block.compress(payload.tobytes(), store_size=False)
        return np.frombuffer(packed, dtype=np.uint8).copy(), (ctx, payload.size)

    def decompress(self, payload, ctx):
        inner_ctx, size = ctx
        if payload.dtype != np.uint8 or payload.ndim != 1:
            raise ValueError(f"lz4: a payload must be a 1-D uint8 array, got {payload.dtype} with shape {payload.shape}")
        try:
            raw = lz4.block.decompress(payload.tobytes(), uncompressed_size=size)
        except lz4.block.LZ4BlockError as e:
            raise ValueError(f"lz4: the frame does not decode to the expected {size} bytes ({e})") from None
        if len(raw) != size:
            raise ValueError(f"lz4: the frame decodes to {len(raw)} bytes; {size} were expected")
        return self.inner.decompress(np.frombuffer(raw, dtype=np.uint8).copy(), inner_ctx)

    def state_dict(self):
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state):
        self.inner.load_state_dict(state["inner"])
