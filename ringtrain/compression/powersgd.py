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
        self.q: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None

    @staticmethod
    def matrix_shape(n: int) -> tuple[int, int]:
        cols = max(1, math.isqrt(max(n - 1, 0)) + 1) if n > 1 else 1
        return -(-n // cols), cols

    def _setup(self, n: int):
        rows, cols = self.matrix_shape(n)
        r = min(self.rank, rows, cols)
        if self.q is None or tuple(self.q.shape) != (cols, r):
            generator = torch.Generator().manual_seed(self.seed)
            self.q = torch.randn(cols, r, generator=generator)
        if self.residual is None or self.residual.numel() != n:
            self.residual = torch.zeros(n)
        return rows, cols

    @staticmethod
    def _matrix(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        m = torch.zeros(rows * cols)
        m[:x.numel()] = x
        return m.view(rows, cols)

    def allreduce_mean(self, x, comm: MPI.Comm):
        # torch for the algebra: its matmuls follow the per-rank thread count,
        # where numpy's BLAS would start its own threads in every rank.
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        rows, cols = self._setup(x.numel())
        m = self._matrix(x + self.residual, rows, cols)
        p = m @ self.q
        allreduce(p, op="mean", comm=comm, check=False)
        p = torch.linalg.qr(p).Q.contiguous()
        q = (m.T @ p).contiguous()
        allreduce(q, op="mean", comm=comm, check=False)
        self.q = q
        approx = (p @ q.T).view(-1)
        self.residual = (m.view(-1) - approx)[:x.numel()].clone()
        return approx[:x.numel()].numpy().copy()

    def compress(self, x):
        """One rank's view: P and Q from this rank's gradient alone (what allreduce_mean sends, before averaging)."""
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        rows, cols = self._setup(x.numel())
        m = self._matrix(x, rows, cols)
        p = torch.linalg.qr(m @ self.q).Q.contiguous()
        q = (m.T @ p).contiguous()
        return np.concatenate([p.numpy().reshape(-1).view(np.uint8), q.numpy().reshape(-1).view(np.uint8)]), x.numel()

    def decompress(self, payload, ctx):
        rows, cols = self.matrix_shape(ctx)
        r = min(self.rank, rows, cols)
        check_size(payload, 4 * r * (rows + cols), self.name)
        p = torch.from_numpy(payload[:4 * rows * r].view(np.float32)).view(rows, r)
        q = torch.from_numpy(payload[4 * rows * r:].view(np.float32)).view(cols, r)
        return (p @ q.T).view(-1)[:ctx].numpy().copy()

    def state_dict(self):
        return {"q": None if self.q is None else self.q.clone(),
                "residual": None if self.residual is None else self.residual.clone()}

    def load_state_dict(self, state):
        self.q = None if state["q"] is None else state["q"].clone()
        self.residual = None if state["residual"] is None else state["residual"].clone()
