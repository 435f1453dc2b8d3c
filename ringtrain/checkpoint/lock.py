"""One run per directory: an exclusive ``flock`` on ``DIR/ringtrain.lock``, held by rank 0.

Two runs writing one directory race: each prunes and cleans up after the
other, and their metrics interleave. The lock file holds its holder's host, PID
and writer id as JSON, so a refused run can say who holds it. The kernel drops
a flock when its process dies (kill -9 included), so a dead holder's lock is
simply free: the next run takes it over and reports the holder it replaces.
Because that holder is provably gone, its leftover ``.tmp-`` directories may be
cleaned up.

A flock belongs to the open file, not to the name: if the directory (or the
lock file) is deleted while the run holds it, a second run can create a new
file and lock that. So before each write that matters the holder calls
``keep()``, which checks that the name still leads to the locked file and, if
not, takes a new lock under that name atomically (create, lock, check that the
name still leads to what was locked); if another run got there first, this run
must stop writing there (``LockLost``).
"""
import fcntl
import json
import os
import socket
import time

from ..fault.errors import UsageError
from .retention import remove_leftovers

NAME = "ringtrain.lock"


class LockLost(UsageError):
    """Another run took the directory after this run's lock file was removed; this run stops writing there."""


def writer_id() -> str:
    """This process as a checkpoint writer: ``host-pid``, as found in its temporary directory names."""
    return f"{socket.gethostname()}-{os.getpid()}"


class DirectoryLock:
    """Holds the lock of ``directory`` from construction until ``close()``; raises UsageError if it is held.

    ``flag`` names the directory in messages (``--checkpoint-dir``, ``--out-dir``); ``leftovers``: a
    dead holder's ``.tmp-`` checkpoint directories are removed on taking its lock over.

    >>> import tempfile; d = tempfile.mkdtemp()
    >>> lock = DirectoryLock(d, "--out-dir"); lock.keep(); lock.close()
    """

    def __init__(self, directory: str, flag: str = "--checkpoint-dir", *, leftovers: bool = True, run: str = ""):
        self.directory, self.flag, self.run = directory, flag, run
        self.path = os.path.join(directory, NAME)
        self._fd = self._lock_or_refuse()
        self.previous = _read(self._fd)  # a holder that died without unlocking, if any
        self._sign()
        if leftovers and self.previous and self.previous.get("writer"):
            # Its lock was free, so it is gone, on whatever host it ran: its half-written checkpoints can go.
            remove_leftovers(directory, dead_writers=(self.previous["writer"],))

    def _lock_or_refuse(self, error=UsageError) -> int:
        """A descriptor of the file now named ``self.path``, exclusively locked. Raises ``error`` if it is held."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read(fd))
                os.close(fd)
                raise error(f"{self.flag} {self.directory} is in use by another run ({holder}) — wait for it to "
                            f"finish or stop it, or give this run another {self.flag}") from None
            if _same_file(fd, self.path):
                return fd
            # The file was removed or replaced between open and flock: what we locked has no name. Again.
            os.close(fd)

    def _sign(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "writer": writer_id(), "since": time.time(),
              "run": self.run}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(me).encode(), 0)
        os.fsync(self._fd)

    def held(self) -> bool:
        """Whether ``directory/ringtrain.lock`` is still the file this run locked."""
        return self._fd is not None and _same_file(self._fd, self.path)

    def keep(self) -> None:
        """Make sure this run still holds the directory before writing there; re-take a removed lock.

        Raises LockLost if the lock file was removed and another run has locked the new one.
        """
        if self.held():
            return
        os.makedirs(self.directory, exist_ok=True)
        try:
            fd = self._lock_or_refuse(LockLost)
        except LockLost as e:
            raise LockLost(f"{self.flag} {self.directory}: its lock file was removed during this run, and {e}; "
                           "this run stops without writing there again") from None
        os.close(self._fd)  # the old file has no name any more: nobody else can lock it
        self._fd = fd
        self._sign()

    def taken_over(self) -> str | None:
        """A sentence naming the dead holder whose lock this run took over, or None."""
        if not self.previous:
            return None
        return f"took over the lock of {_describe(self.previous)}, which is no longer running"

    def close(self) -> None:
        if self._fd is None:
            return
        if self.held():
            os.ftruncate(self._fd, 0)  # an empty file says nobody holds it
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: str) -> bool:
    try:
        named, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


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
