"""Error feedback: what compression drops this step is added to the next step's input.

    y = x + residual;  sent = decompress(compress(y));  residual = y - sent

so ``sent + new residual = x + old residual`` exactly, and nothing is lost over
time, only delayed. The residual is per rank and per bucket, and is part of the
checkpoint (resetting it, as some frameworks do on resume, changes the run).
"""
import numpy as np
import torch

from .base import Compressor


class Sent:
    """ErrorFeedback's ``ctx``: the inner compressor's, and the decoding of the payload it came with.

    ``compress`` decodes its own payload anyway (for the residual), and every caller
    decodes that payload next (the allgather's own frame, the codec benchmark):
    ``decompress`` hands the kept decoding out once, for that payload object only.
    Any other array, a copy or a corrupted one included, is decoded for real.
    """

    __slots__ = ("inner", "payload", "decoded")

    def __init__(self, inner, payload: np.ndarray, decoded: np.ndarray):
        self.inner, self.payload, self.decoded = inner, payload, decoded

    def take(self, payload) -> np.ndarray | None:
        """The kept decoding if ``payload`` is the very array compress returned, the first time; else None."""
        if payload is not self.payload or self.decoded is None:
            return None
        decoded, self.decoded = self.decoded, None  # handed out once: the caller owns it now
        return decoded


class ErrorFeedback(Compressor):
    """Error feedback around ``inner``; see the module's docstring.

    >>> from ringtrain.compression import TopK
    >>> ef = ErrorFeedback(TopK(k=1))
    >>> ef.decompress(*ef.compress(np.array([3, 1], np.float32))), ef.residual
    (array([3., 0.], dtype=float32), array([0., 1.], dtype=float32))
    """

    feedback = True

    def __init__(self, inner: Compressor):
        self.inner = inner
        self.name = f"ef({inner.name})"
        self.residual: np.ndarray | None = None

    def _corrected(self, x):
        x = np.asarray(x, dtype=np.float32)
        if self.residual is None or self.residual.size != x.size:
            self.residual = np.zeros(x.size, dtype=np.float32)
            self._corrected_buffer = np.empty(x.size, dtype=np.float32)
        # Into a buffer kept between calls: a fresh array of tens of MB costs a page fault per 4 KiB.
        return np.add(x, self.residual, out=self._corrected_buffer)

    @property
    def layered(self) -> bool:
        return self.inner.layered

    def set_layout(self, segments) -> None:
        self.inner.set_layout(segments)

    def wire_bytes(self, count: int) -> int | None:
        return self.inner.wire_bytes(count)

    def compress(self, x):
        y = self._corrected(x)
        payload, ctx = self.inner.compress(y)
        sent = self.inner.decompress(payload, ctx)
        np.subtract(y, sent, out=self.residual)
        return payload, Sent(ctx, payload, sent)

    def decompress(self, payload, ctx: Sent):
        decoded = ctx.take(payload)
        return decoded if decoded is not None else self.inner.decompress(payload, ctx.inner)

    def state_dict(self):
        # torch tensors, not numpy arrays: checkpoints load with weights_only=True.
        residual = None if self.residual is None else torch.from_numpy(self.residual.copy())
        return {"residual": residual, "inner": self.inner.state_dict()}

    def load_state_dict(self, state):
        residual = state["residual"]
        self.residual = None if residual is None else residual.numpy().astype(np.float32, copy=True)
        if self.residual is not None:
            self._corrected_buffer = np.empty(self.residual.size, dtype=np.float32)
        self.inner.load_state_dict(state["inner"])
