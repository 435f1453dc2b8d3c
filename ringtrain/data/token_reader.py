"""The token cache, read window by window with os.pread: damage under a running job is one line, not a crash.

A memory-mapped file that shrinks under its reader kills the process with
SIGBUS, which Python cannot catch (MPICH reports "exit code 7" and nothing
else). A ``pread`` that comes back short is an ordinary value: it becomes a
UsageError naming the cache, the size expected and the size found. Each 1 MiB
block is also checked against its CRC-32 the first time this process reads
from it (~1 ms per MiB, once), so bytes overwritten during the run are caught
too. Reads share no file position, so the prefetch thread and the main thread
may read at once.

>>> import tempfile
>>> with tempfile.NamedTemporaryFile() as f:
...     _ = f.write(bytes(range(10))); f.flush()
...     reader = TokenReader(f.name, 10, [zlib.crc32(bytes(range(10)))], block=1 << 20)
...     len(reader), reader[3:6].tolist()
(10, [3, 4, 5])
"""
import os
import zlib

import numpy as np

from ..fault.errors import UsageError


class TokenReader:
    """``reader[a:b]``: tokens a..b-1 as a uint8 array, like the slice of an array of ``tokens`` bytes."""

    def __init__(self, path: str, tokens: int, blocks: list[int], *, block: int):
        self.path, self.tokens, self.block = str(path), tokens, block
        self._crcs = list(blocks)
        self._checked = np.zeros(len(self._crcs), dtype=bool)
        self._file = open(path, "rb", buffering=0)  # closed with the reader
        size = os.fstat(self._file.fileno()).st_size
        if size != tokens:
            raise UsageError(f"the token cache {self.path} has {size:,} bytes, {tokens:,} expected: it changed after "
                             "rank 0 checked it — run again; the next start rebuilds it")

    def __len__(self) -> int:
        return self.tokens

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError(f"TokenReader takes slices (reader[a:b]), got {type(key).__name__}")
        start, stop, step = key.indices(self.tokens)
        if step != 1:
            raise TypeError("TokenReader takes contiguous slices only")
        return self.read(start, max(stop - start, 0))

    def read(self, offset: int, count: int) -> np.ndarray:
        """Tokens ``offset .. offset + count - 1``; their blocks are verified first if this process has not yet."""
        if count == 0:
            return np.empty(0, dtype=np.uint8)
        for b in range(offset // self.block, (offset + count - 1) // self.block + 1):
            if not self._checked[b]:
                self._verify(b)
        return np.frombuffer(self._pread(offset, count), dtype=np.uint8)

    def _verify(self, b: int) -> None:
        lo = b * self.block
        data = self._pread(lo, min(self.block, self.tokens - lo))
        if zlib.crc32(data) != self._crcs[b]:
            raise UsageError(f"the token cache {self.path} changed while this run was reading it: block {b} (bytes "
                             f"{lo:,}..{lo + len(data) - 1:,}) fails its checksum — the next start rebuilds it")
        self._checked[b] = True  # two threads may both verify a block at first: harmless

    def _pread(self, offset: int, count: int) -> bytes:
        try:
            data = os.pread(self._file.fileno(), count, offset)
        except OSError as e:
            raise UsageError(f"the token cache {self.path} cannot be read ({e.strerror or e}) — check the disk; "
                             "the next start rebuilds it if it is damaged") from None
        if len(data) < count:
            size = os.fstat(self._file.fileno()).st_size
            raise UsageError(f"the token cache {self.path} shrank while this run was reading it: {size:,} bytes, "
                             f"{self.tokens:,} expected — the next start rebuilds it")
        return data

    def close(self) -> None:
        self._file.close()
