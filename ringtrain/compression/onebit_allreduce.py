"""The compressed allreduce of 1-bit Adam: signs through per-part servers, with error feedback on both sides.

The buffer is cut into one part per rank (at multiples of the sign chunk, so
no chunk's scale spans two parts); rank r is the server of part r.

1. Worker: ``c = x + e_worker``; each part of ``c`` is compressed to signs and
   one scale per chunk (OneBit), and ``e_worker = c - decompress(c)``.
2. An alltoall sends part r of every worker's payload to rank r.
3. Server: ``s = mean of the workers' decompressed parts + e_server``;
   ``s`` is compressed, and ``e_server = s - decompress(s)``.
4. An allgather of the servers' payloads; every rank decompresses all of them,
   so every rank ends with the same buffer, bit for bit.

Each rank sends 2(N-1)/N of the signs and scales: about 1/32 of a float32
ring allreduce. (Tang et al., 2021, "1-bit Adam"; the residuals are what keep
the compressed momentum unbiased over steps.)

>>> x = np.arange(-8.0, 8.0, dtype=np.float32)
>>> state = OneBitAllreduce(x.size, MPI.COMM_SELF, chunk=8)
>>> state.mean(x.copy())[:4]                    # one rank: its own signs times each chunk's mean |x|
array([-4.5, -4.5, -4.5, -4.5], dtype=float32)
"""
import numpy as np
import torch
from mpi4py import MPI

from ..collectives import traffic
from .onebit import OneBit


class OneBitAllreduce:
    """The parts and both residuals for a ``count``-element float32 buffer on ``comm``."""

    def __init__(self, count: int, comm: MPI.Comm, chunk: int = 1024):
        self.comm, self.count = comm, count
        n, r = comm.Get_size(), comm.Get_rank()
        self.codec = OneBit(chunk=chunk)
        per = -(-count // (n * chunk)) * chunk  # a part: whole chunks
        self.parts = [(min(i * per, count), min((i + 1) * per, count)) for i in range(n)]
        self.sizes = [self.codec.wire_bytes(hi - lo) if hi > lo else 0 for lo, hi in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(int)
        lo, hi = self.parts[r]
        self.worker_error = np.zeros(count, dtype=np.float32)
        self.server_error = np.zeros(hi - lo, dtype=np.float32)
        self.last_wire_bytes = 0

    def mean(self, x: np.ndarray) -> np.ndarray:
        """Replace ``x`` (float32, ``count`` elements) by the compressed mean over ranks; returns it. Collective."""
        comm, n, r = self.comm, self.comm.Get_size(), self.comm.Get_rank()
        c = np.add(x, self.worker_error, out=x)  # x is overwritten by the result below: no copy needed
        send = np.empty(sum(self.sizes), dtype=np.uint8)
        for (lo, hi), at, size in zip(self.parts, self.offsets, self.sizes):
            if hi > lo:
                payload, _ = self.codec.compress(c[lo:hi])
                send[at:at + size] = payload
                self.worker_error[lo:hi] = c[lo:hi] - self.codec.decompress(payload, hi - lo)
        lo, hi = self.parts[r]
        mine = self.sizes[r]
        received = np.empty(n * mine, dtype=np.uint8)
        counts = [mine] * n
        comm.Alltoallv([send, self.sizes, self.offsets, MPI.BYTE],
                       [received, counts, [i * mine for i in range(n)], MPI.BYTE])
        sent = sum(self.sizes) - mine
        server = None
        if hi > lo:
            total = np.zeros(hi - lo, dtype=np.float32)
            for i in range(n):  # in rank order on every server: the sum does not depend on arrival
                total += self.codec.decompress(received[i * mine:(i + 1) * mine], hi - lo)
            s = total / n + self.server_error
            server, _ = self.codec.compress(s)
            mine_decoded = self.codec.decompress(server, hi - lo)
            self.server_error[:] = s - mine_decoded
        gathered = np.empty(sum(self.sizes), dtype=np.uint8)
        comm.Allgatherv([server if server is not None else np.empty(0, np.uint8), mine, MPI.BYTE],
                        [gathered, self.sizes, self.offsets, MPI.BYTE])
        sent += (n - 1) * mine
        for i, ((plo, phi), at, size) in enumerate(zip(self.parts, self.offsets, self.sizes)):
            if phi > plo:  # this rank's own part was decoded above, from the same bytes
                x[plo:phi] = mine_decoded if i == r else self.codec.decompress(gathered[at:at + size], phi - plo)
        self.last_wire_bytes = sent if n > 1 else 0
        traffic.sent(self.last_wire_bytes)
        return x

    def state_dict(self) -> dict:
        # torch tensors, not numpy arrays: checkpoints load with weights_only=True.
        return {"worker_error": torch.from_numpy(self.worker_error.copy()),
                "server_error": torch.from_numpy(self.server_error.copy()), "parts": [list(p) for p in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        if [tuple(p) for p in state["parts"]] != list(self.parts):
            raise ValueError("the saved 1-bit residuals were cut for another number of ranks")
        self.worker_error[:] = state["worker_error"].numpy()
        self.server_error[:] = state["server_error"].numpy()
