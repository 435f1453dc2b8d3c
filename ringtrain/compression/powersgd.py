"""PowerSGD: a rank-r approximation of the gradient matrix, by one step of power iteration.

The flat bucket is viewed as a near-square matrix M (rows x cols, zero-padded).
With Q (cols x r) kept from the previous step (warm start; the first Q is drawn
from ``seed``, so it is the same on every rank):

    P = M Q          allreduce-mean P   (rows x r)
    P = orth(P)                          (QR: the same on every rank, P being the same)
    Q = M^T P        allreduce-mean Q   (cols x r)
    M_hat = P Q^T                        the averaged approximation

and M - M_hat is fed back into the next step (error feedback). Both messages
are sums of per-rank terms, so they go through the ordinary allreduce: wire
bytes are (rows + cols) r float32 instead of rows x cols.
"""
import math

import numpy as np
import torch
from mpi4py import MPI

from ..collectives import allreduce
from .base import Compressor, check_size


class PowerSGD(Compressor):
    name = "powersgd"

    def __init__(self, rank: int = 4, seed: int = 0):
        if rank < 1:
            raise ValueError(f"powersgd: rank must be >= 1, got {rank}")
        self.rank, self.seed = int(rank), int(seed)
        self.q: np.ndarray | None = None
        self.residual: np.ndarray | None = None

    @staticmethod
    def matrix_shape(n: int) -> tuple[int, int]:
        cols = max(1, math.isqrt(max(n - 1, 0)) + 1) if n > 1 else 1
        return -(-n // cols), cols

    def _setup(self, n: int):
        rows, cols = self.matrix_shape(n)
        r = min(self.rank, rows, cols)
        if self.q is None or self.q.shape != (cols, r):
            self.q = np.random.default_rng(self.seed).standard_normal((cols, r)).astype(np.float32)
        if self.residual is None or self.residual.size != n:
            self.residual = np.zeros(n, dtype=np.float32)
        return rows, cols

    def _matrix(self, x, rows, cols):
        m = np.zeros(rows * cols, dtype=np.float32)
        m[:x.size] = x
        return m.reshape(rows, cols)

    def allreduce_mean(self, x, comm: MPI.Comm):
        x = np.asarray(x, dtype=np.float32)
        rows, cols = self._setup(x.size)
        m = self._matrix(x + self.residual, rows, cols)
        p = m @ self.q
        allreduce(p, op="mean", comm=comm, check=False)
        p = np.ascontiguousarray(np.linalg.qr(p)[0], dtype=np.float32)
        q = np.ascontiguousarray(m.T @ p)
        allreduce(q, op="mean", comm=comm, check=False)
        self.q = q
        approx = (p @ q.T).reshape(-1)
        self.residual = (m.reshape(-1) - approx)[:x.size]
        return approx[:x.size].copy()

    def compress(self, x):
        """One rank's view: P and Q from this rank's gradient alone (what allreduce_mean sends, before averaging)."""
        x = np.asarray(x, dtype=np.float32)
        rows, cols = self._setup(x.size)
        m = self._matrix(x, rows, cols)
        p = np.ascontiguousarray(np.linalg.qr(m @ self.q)[0], dtype=np.float32)
        q = np.ascontiguousarray(m.T @ p)
        return np.concatenate([p.reshape(-1).view(np.uint8), q.reshape(-1).view(np.uint8)]), x.size

    def decompress(self, payload, ctx):
        rows, cols = self.matrix_shape(ctx)
        r = min(self.rank, rows, cols)
        check_size(payload, 4 * r * (rows + cols), self.name)
        p = payload[:4 * rows * r].view(np.float32).reshape(rows, r)
        q = payload[4 * rows * r:].view(np.float32).reshape(cols, r)
        return (p @ q.T).reshape(-1)[:ctx].copy()

    def state_dict(self):
        as_tensor = lambda a: None if a is None else torch.from_numpy(a.copy())  # noqa: E731
        return {"q": as_tensor(self.q), "residual": as_tensor(self.residual)}

    def load_state_dict(self, state):
        as_array = lambda t: None if t is None else t.numpy().astype(np.float32, copy=True)  # noqa: E731
        self.q, self.residual = as_array(state["q"]), as_array(state["residual"])
