"""One run per checkpoint directory: an exclusive ``flock`` on ``DIR/ringtrain.lock``, held by rank 0.

Two runs writing one directory race: each prunes and cleans up after the
other. The lock file holds its holder's host, PID and writer id as JSON, so a
refused run can say who holds it. The kernel drops a flock when its process
dies (kill -9 included), so a dead holder's lock is simply free: the next run
takes it over and reports the holder it replaces. Because that holder is
provably gone, its leftover ``.tmp-`` directories may be cleaned up.
"""
import fcntl
import json
import os
import socket
import time

from ..fault.errors import UsageError
from .retention import remove_leftovers

NAME = "ringtrain.lock"


def writer_id() -> str:
    """This process as a checkpoint writer: ``host-pid``, as found in its temporary directory names."""
    return f"{socket.gethostname()}-{os.getpid()}"


class DirectoryLock:
    """Holds the lock of ``directory`` from construction until ``close()``; raises UsageError if it is held."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, NAME)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(self._fd))
            os.close(self._fd)
            raise UsageError(f"--checkpoint-dir {directory} is in use by another run ({holder}) — wait for it to "
                             f"finish or stop it, or give this run another --checkpoint-dir") from None
        self.previous = _read(self._fd)  # a holder that died without unlocking, if any
        me = {"host": socket.gethostname(), "pid": os.getpid(), "writer": writer_id(), "since": time.time()}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(me).encode(), 0)
        os.fsync(self._fd)
        if self.previous and self.previous.get("writer"):
            # Its lock was free, so it is gone, on whatever host it ran: its half-written checkpoints can go.
            remove_leftovers(directory, dead_writers=(self.previous["writer"],))

    def taken_over(self) -> str | None:
        """A sentence naming the dead holder whose lock this run took over, or None."""
        if not self.previous:
            return None
        return f"took over the lock of {_describe(self.previous)}, which is no longer running"

    def close(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # an empty file says nobody holds it
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _read(fd: int) -> dict | None:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return None


def _describe(holder: dict | None) -> str:
    if not holder:
        return "a process that has not yet written its name"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"PID {holder.get('pid')} on host {holder.get('host')}, since {since}"
