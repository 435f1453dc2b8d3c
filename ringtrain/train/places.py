"""The directories a run writes (--out-dir, --checkpoint-dir), each locked by rank 0 for the whole run.

One lock per directory, or one for both when they are the same directory.
Nested directories (``--checkpoint-dir out/ckpt``) hold a lock each, since a
later run may name either one alone. Rank 0 calls ``keep`` before each
checkpoint, with the verdict agreed, so a run whose directory was deleted and
taken by another run stops on every rank instead of writing beside it.
"""
import os

from mpi4py import MPI

from ..checkpoint import DirectoryLock
from ..fault.errors import UsageError, agree


class RunPlaces:
    """The run's directory locks (rank 0 holds them; other ranks hold an empty RunPlaces)."""

    def __init__(self, out_dir: str | None = None, checkpoint_dir: str | None = None, *, run: str = ""):
        self.out = self.checkpoints = None
        if out_dir is None:
            return
        same = checkpoint_dir is not None and os.path.realpath(out_dir) == os.path.realpath(checkpoint_dir)
        self.out = DirectoryLock(out_dir, "--out-dir and --checkpoint-dir" if same else "--out-dir",
                                 leftovers=same, run=run)
        try:
            self.checkpoints = self.out if same else (
                DirectoryLock(checkpoint_dir, "--checkpoint-dir", run=run) if checkpoint_dir else None)
        except UsageError:
            self.out.close()
            raise

    def taken_over(self) -> list[str]:
        """One sentence per directory whose dead holder's lock this run took over."""
        locks = {id(lock): lock for lock in (self.out, self.checkpoints) if lock is not None}
        return [f"{lock.directory}: {lock.taken_over()}" for lock in locks.values() if lock.taken_over()]

    def keep(self, comm: MPI.Comm) -> None:
        """Re-take any lock whose file was removed; every rank raises LockLost's line if another run has it.
        Collective."""
        error = None
        try:
            for lock in (self.out, self.checkpoints):
                if lock is not None:
                    lock.keep()
        except (UsageError, OSError) as e:
            error = e if isinstance(e, UsageError) else f"{e.filename}: cannot re-take the lock ({e.strerror})"
        agree(comm, error)

    def close(self) -> None:
        for lock in (self.checkpoints, self.out):
            if lock is not None:
                lock.close()
