"""Checkpoint directories written atomically and verified on load.

Layout of ``DIR/step-00000100/``:

- ``replicated.pt``: state every rank shares (model, optimizer, step, config), written by rank 0;
- ``rank-00003.pt``: state of one rank (RNG, compression residuals), written by that rank;
- ``MANIFEST.json``: every file's size and SHA-256, the step and the world size, written last.

Everything is written into ``step-00000100.tmp-<host>-<pid>-<nonce>/``; each
file is fsynced, then the manifest, then the directory, and only then is it
renamed to its final name and the parent directory fsynced. A directory named
``step-*`` (without ``.tmp``) therefore always holds a complete checkpoint; a
kill at any moment leaves at most a ``.tmp`` directory, which readers ignore and
a later save removes once its writer is provably dead (retention.py).

Loading re-checks every checksum and unpickles every file with
``weights_only=True``; a checkpoint that fails either is moved aside as
``damaged-step-*`` and loading falls back to the previous one, with a warning.
If checkpoints exist but none loads, loading refuses rather than let a run
start from step 0 over them. Nothing here deletes a checkpoint except pruning
of the run's own, verified lineage.
"""
import hashlib
import io
import json
import os
import shutil
import sys
import uuid

import torch
from mpi4py import MPI

from ..fault.errors import UsageError
from . import retention
from .lock import writer_id
from .retention import MANIFEST, complete_steps

FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or no valid one could be read."""


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> dict:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _serialize(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def rank_file(rank: int) -> str:
    """The name of one rank's file in a checkpoint directory.

    >>> rank_file(3)
    'rank-00003.pt'
    """
    return f"rank-{rank:05d}.pt"


def new_lineage() -> str:
    """A fresh lineage id, for a run that does not continue a checkpoint."""
    return uuid.uuid4().hex[:12]


def save(directory: str, step: int, replicated: dict, per_rank: dict, comm: MPI.Comm, keep: int = 3,
         lineage: str = "") -> str:
    """Write checkpoint ``step`` collectively; returns its final path on every rank.

    ``replicated`` is taken from rank 0; every rank contributes ``per_rank``.
    ``lineage`` names the run the checkpoint belongs to: pruning to the
    ``keep`` newest touches only checkpoints of the same lineage.
    Raises CheckpointError on every rank if any rank failed to write its part.
    """
    rank, world = comm.Get_rank(), comm.Get_size()
    final = os.path.join(directory, f"step-{step:08d}")
    tmp, error = None, None
    if rank == 0:
        try:
            os.makedirs(directory, exist_ok=True)
            tmp = f"{final}.tmp-{writer_id()}-{uuid.uuid4().hex[:8]}"
            os.makedirs(tmp)
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
    tmp, error = comm.bcast((tmp, error), root=0)
    if error:
        raise CheckpointError(f"checkpoint step {step} in {directory} was not written: {error}")
    entry, error = None, None
    try:
        name = rank_file(rank)
        entry = (name, _write_file(os.path.join(tmp, name), _serialize(per_rank)))
    except Exception as e:  # reported to rank 0, which decides for everyone
        error = f"rank {rank}: {type(e).__name__}: {e}"
    gathered = comm.gather((entry, error), root=0)
    outcome = None
    if rank == 0:
        errors = [e for _, e in gathered if e]
        try:
            if errors:
                raise CheckpointError("; ".join(errors))
            files = dict(e for e, _ in gathered)
            files["replicated.pt"] = _write_file(os.path.join(tmp, "replicated.pt"), _serialize(replicated))
            manifest = {"format": FORMAT, "step": step, "world_size": world, "lineage": lineage, "files": files}
            _write_file(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=1).encode())
            _fsync_dir(tmp)
            if os.path.exists(final):  # an earlier run of the same step: kept aside, not overwritten
                retention.move_aside(final, "replaced")
            os.rename(tmp, final)
            _fsync_dir(directory)
            # Its checksums were computed from the bytes just written and fsynced: pruning
            # need not read it back. Older ones are read once per process.
            _VERIFIED[final] = _stamp(final)
            retention.prune(directory, keep, lineage, _verified)
            retention.remove_leftovers(directory)
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            outcome = f"{type(e).__name__}: {e}"
    outcome = comm.bcast(outcome, root=0)
    if outcome:
        raise CheckpointError(f"checkpoint step {step} in {directory} was not written: {outcome}")
    return final


# What this process has checked, by path, with the stamp the directory had then:
# a file whose size or mtime changed since is checked again.
_VERIFIED: dict[str, tuple] = {}                  # checksums match
_LOADABLE: dict[str, tuple[tuple, dict]] = {}     # ... and every file unpickles; with its manifest


def _stamp(path: str) -> tuple | None:
    """Each file's (name, size, mtime) in a checkpoint directory; None if it cannot be read."""
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path)))
    except OSError:
        return None


def _verified(path: str) -> bool:
    """Whether the checkpoint at ``path`` verifies; read again only if a file's size or mtime changed since."""
    stamp = _stamp(path)
    if stamp is None:
        return False
    if _VERIFIED.get(path) == stamp:
        return True
    try:
        verify(path)
    except CheckpointError:
        return False
    _VERIFIED[path] = stamp
    return True


def verify(path: str) -> dict:
    """The manifest of the checkpoint at ``path`` if every file matches it; raises CheckpointError otherwise."""
    try:
        with open(os.path.join(path, MANIFEST), "rb") as f:
            manifest = json.loads(f.read())
        if manifest.get("format") != FORMAT:
            raise CheckpointError(f"unknown format {manifest.get('format')!r}")
        for name, want in manifest["files"].items():
            with open(os.path.join(path, name), "rb") as f:
                data = f.read()
            if len(data) != want["bytes"]:
                raise CheckpointError(f"{name} has {len(data)} bytes, the manifest says {want['bytes']}")
            if hashlib.sha256(data).hexdigest() != want["sha256"]:
                raise CheckpointError(f"{name} does not match its checksum")
        return manifest
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{type(e).__name__}: {e}") from None


def loadable(path: str) -> dict:
    """The manifest if every file of ``path`` matches it and unpickles with weights_only; else CheckpointError.

    Checked once per process while the files stay as they were (a run looks
    its checkpoint up twice when it autotunes); ``load_part`` still checks the
    checksum of what it loads.
    """
    stamp = _stamp(path)
    hit = _LOADABLE.get(path)
    if stamp is not None and hit is not None and hit[0] == stamp:
        return hit[1]
    manifest = verify(path)
    for name in manifest["files"]:
        if name.endswith(".pt"):
            load_part(path, name, manifest)
    if stamp is not None:
        _LOADABLE[path] = (stamp, manifest)
        _VERIFIED[path] = stamp
    return manifest


def find_latest(directory: str, comm: MPI.Comm) -> tuple[str | None, dict | None]:
    """The newest loadable checkpoint in ``directory`` and its manifest, or (None, None); collective.

    Rank 0 checks every file of each checkpoint, newest first (checksums,
    then unpickling with weights_only), moves each that fails aside as
    ``damaged-step-*`` with a warning, and broadcasts the choice. If the
    directory holds checkpoints (or damaged ones from before) but none
    loads, every rank raises UsageError: starting from step 0 would bury them.
    """
    choice, refusal = (None, None), None
    if comm.Get_rank() == 0:
        failures = []
        for step in sorted(complete_steps(directory), reverse=True):
            path = os.path.join(directory, f"step-{step:08d}")
            try:
                choice = (path, loadable(path))
                break
            except CheckpointError as e:
                aside = _move_damaged(path)
                failures.append(f"{os.path.basename(path)} ({e})")
                print(f"ringtrain: warning: checkpoint {path} is damaged ({e}); moved to {aside}; falling back to "
                      "an older one", file=sys.stderr, flush=True)
        damaged = os.path.isdir(directory) and any(n.startswith("damaged-") for n in os.listdir(directory))
        if choice[0] is None and (failures or damaged):
            said = (", ".join(f.split(" ")[0] for f in failures) + " (each named above)" if failures
                    else "only damaged-* checkpoints from before")
            refusal = (f"--checkpoint-dir {directory} holds checkpoints but none can be loaded: {said} — they are "
                       "kept as damaged-step-*; fix or remove them, or pass --resume none to start from step 0 "
                       "beside them")
    choice, refusal = comm.bcast((choice, refusal), root=0)
    if refusal:
        raise UsageError(refusal, agreed=True)
    return choice


def _move_damaged(path: str) -> str:
    try:
        return retention.move_aside(path, "damaged")
    except OSError as e:  # a read-only directory: leave it where it is, but say so
        return f"nowhere ({e.strerror}); it stays"


def load_part(path: str, name: str, manifest: dict):
    """Load one file of a verified checkpoint, checking its checksum again, with weights_only=True."""
    with open(os.path.join(path, name), "rb") as f:
        data = f.read()
    want = manifest["files"].get(name)
    if want is None:
        raise CheckpointError(f"{path} has no {name}")
    if hashlib.sha256(data).hexdigest() != want["sha256"]:
        raise CheckpointError(f"{path}/{name} changed since it was verified")
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:  # weights_only refuses arbitrary pickles: that is damage too, not a crash
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{name} does not unpickle with weights_only=True ({first})") from None
