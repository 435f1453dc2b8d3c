"""Machine-readable metrics (JSON lines) and the progress line, both from rank 0."""
import json
import os
import time

from ..fault.errors import ResourceError


class Metrics:
    """Appends one JSON object per line to ``out_dir/metrics.jsonl`` on rank 0; a no-op elsewhere.

    Every row carries ``run``, this run's id, so rows of runs that share the
    file (a resume appends to it) can be told apart. A file whose last line
    was cut off (a kill, a full disk) is continued on a fresh line. If the file
    is removed during the run, ``lock`` (the --out-dir lock) is kept and the
    file opened anew. A failed write is one line naming the file (exit code 2).
    """

    def __init__(self, out_dir: str, rank: int, *, run: str = "", lock=None):
        self._file, self.run, self._lock = None, run, lock
        if rank == 0:
            os.makedirs(out_dir, exist_ok=True)
            self.path = os.path.join(out_dir, "metrics.jsonl")
            self._open()

    def _open(self) -> None:
        try:
            self._file = open(self.path, "a", buffering=1)
            self._identity = _identity(os.fstat(self._file.fileno()))
            if self._file.tell() and _last_byte(self.path) != b"\n":
                self._file.write("\n")  # the previous run's last line was cut off: start on a line of our own
        except OSError as e:
            self._failed(e)

    def write(self, **row) -> None:
        if self._file is None:
            return
        try:
            if _path_identity(self.path) != self._identity:  # removed or replaced under us
                if self._lock is not None:
                    self._lock.keep()
                self._file.close()
                self._open()
            self._file.write(json.dumps({"time": round(time.time(), 3), "run": self.run, **row}) + "\n")
        except OSError as e:
            self._failed(e)

    def _failed(self, e: OSError):
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass  # the same failure again: the first one is what the user needs to hear
        raise ResourceError(f"writing {self.path} failed: {e.strerror or e} (errno {e.errno}) — free space there "
                            "or give another --out-dir") from None

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError:
                pass  # a row that could not be flushed was reported by write(), or the run is failing anyway


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _path_identity(path: str):
    try:
        return _identity(os.stat(path))
    except FileNotFoundError:
        return None


def _last_byte(path: str) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def progress_line(step: int, steps: int, loss: float, lr: float, per_s: float, comm_share: float | None,
                  exposed_share: float, step_s: float, *, wire_bytes: int | None = None, unit: str = "tokens",
                  epoch: float | None = None) -> str:
    """One line of progress, as rank 0 prints it.

    >>> progress_line(10, 100, 2.5, 1e-3, 5000, 0.3, 0.1, 0.2, wire_bytes=3_000_000, unit="samples", epoch=1.5)
    'step  10/100 | epoch 1.50 | loss 2.5000 | lr 1.00e-03 | 5,000 samples/s | 200 ms/step | comm 30% of step, 10% exposed | 3.0 MB sent'
    """
    short = {"tokens": "tok/s"}.get(unit, f"{unit}/s")
    return (f"step {step:>{len(str(steps))}}/{steps} | " + (f"epoch {epoch:.2f} | " if epoch is not None else "")
            + f"loss {loss:.4f} | lr {lr:.2e} | {per_s:,.0f} {short} | {step_s * 1e3:.0f} ms/step | "
            + (f"comm {100 * comm_share:.0f}% of step, " if comm_share is not None else "")
            + f"{100 * exposed_share:.0f}% exposed"
            + (f" | {wire_bytes / 1e6:.1f} MB sent" if wire_bytes is not None else ""))


def say(rank: int, text: str) -> None:
    if rank == 0:
        print(text, flush=True)
