"""Deep Gradient Compression (Lin et al., 2018): top-k with momentum correction, factor masking, local
clipping and a warm-up of the density.

Per rank and bucket, each step, with local gradient g:

    g = g * min(1, (clip / sqrt(N)) / |g|)      local clipping (clip > 0), N the number of ranks
    u = momentum * u + g                        momentum correction: the velocity, kept locally
    v = v + u                                   accumulated, nothing dropped, only delayed
    send the top-k of |v|; then v = 0 and u = 0 where sent     (momentum factor masking)

The averaged sparse ``v`` already carries the momentum, so the optimizer
applies it without momentum of its own: with SGD, give the momentum to dgc
and ``--momentum 0`` to the optimizer. Adam's update is not linear in the
gradient, so its momentum cannot move into the accumulator as it is; with
its variance frozen after a warm-up it is (1-bit Adam's observation), and
``--compression dgc:momentum=0.9,...`` under AdamW runs DGC on Adam's
momentum that way (optim/dgc_adam.py). ``momentum=0`` under AdamW is plain
top-k of the gradient with accumulation (error feedback), local clipping and
the density warm-up, AdamW's own moments acting on the averaged sparse
gradient. The density falls exponentially from 25% to ``ratio`` over the
first ``warmup`` steps (DGC: 25%, 6.25%, 1.56%, 0.4%, then 0.1%), so early
training, where gradients change fastest, is compressed least.

Clipping is per bucket (each bucket is compressed on its own): with one
bucket it is DGC's exactly.

``masking=0`` keeps the velocity where v was sent: each gradient then reaches
the parameters with its whole momentum tail, only delayed, so at ratio 1 the
scheme is momentum SGD exactly. Masking cuts that tail at the send (DGC's
guard against stale momentum); under AdamW's frozen variance
(optim/dgc_adam.py) it cost loss here, and masking=0 is what to use there.
"""
import numpy as np
import torch
from mpi4py import MPI

from ..checks import number, whole
from .base import Compressor
from .params import require
from .topk import TopK

START_DENSITY = 0.25


class DGC(Compressor):
    name = "dgc"
    params = {"ratio": number(0, 1, above=True), "momentum": number(0, 1, below=True), "warmup": whole(0),
              "clip": number(0), "masking": whole(0, 1)}

    def __init__(self, ratio: float = 0.001, momentum: float = 0.0, warmup: int = 0, clip: float = 0.0,
                 masking: int = 1):
        require(self.name, self.params, ratio=ratio, momentum=momentum, warmup=warmup, clip=clip, masking=masking)
        self.ratio, self.momentum, self.warmup, self.clip = float(ratio), float(momentum), int(warmup), float(clip)
        self.masking = bool(masking)
        self.velocity = self.accumulated = None
        self.steps = 0
        self._world = 1
        self._topk = TopK(ratio=self.density())

    def density(self) -> float:
        """The share of values sent at this step: 25% falling exponentially to ``ratio`` over ``warmup`` steps."""
        if self.steps >= self.warmup or self.ratio >= START_DENSITY:
            return self.ratio
        return START_DENSITY * (self.ratio / START_DENSITY) ** (self.steps / self.warmup)

    def wire_bytes(self, count: int) -> int:
        return self._topk.wire_bytes(count)

    def before_gather(self, comm: MPI.Comm) -> None:
        self._world = comm.Get_size()  # local clipping scales with it

    def compress(self, x):
        g = np.asarray(x, dtype=np.float32)
        if self.velocity is None or self.velocity.size != g.size:
            self.velocity = np.zeros(g.size, dtype=np.float32)
            self.accumulated = np.zeros(g.size, dtype=np.float32)
        if self.clip:
            norm = float(np.linalg.norm(g.astype(np.float64)))
            limit = self.clip / np.sqrt(self._world)
            if norm > limit:
                g = g * np.float32(limit / (norm + 1e-6))
        self.velocity *= np.float32(self.momentum)
        self.velocity += g
        self.accumulated += self.velocity
        self._topk = TopK(ratio=self.density())
        payload, ctx = self._topk.compress(self.accumulated)
        sent = self._topk.positions(payload, ctx)  # k positions, not a dense decompress
        self.accumulated[sent] = 0
        if self.masking:
            self.velocity[sent] = 0
        self.steps += 1
        return payload, ctx

    def decompress(self, payload, ctx) -> np.ndarray:
        return self._topk.decompress(payload, ctx)  # every rank is at the same step, so at the same density

    def state_dict(self) -> dict:
        # torch tensors, not numpy arrays: checkpoints load with weights_only=True.
        def tensor(a):
            return None if a is None else torch.from_numpy(a.copy())
        return {"velocity": tensor(self.velocity), "accumulated": tensor(self.accumulated), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        def array(t):
            return None if t is None else t.numpy().astype(np.float32, copy=True)
        self.velocity, self.accumulated = array(state["velocity"]), array(state["accumulated"])
        self.steps = int(state["steps"])
        self._topk = TopK(ratio=self.density())
