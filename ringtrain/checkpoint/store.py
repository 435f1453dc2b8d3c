"""Checkpoint directories written atomically and verified on load.

Layout of ``DIR/step-00000100/``:

- ``replicated.pt``: state every rank shares (model, optimizer, step, config), written by rank 0;
- ``rank-00003.pt``: state of one rank (RNG, compression residuals), written by that rank;
- ``MANIFEST.json``: every file's size and SHA-256, the step and the world size, written last.

Everything is written into ``step-00000100.tmp-<nonce>/``; each file is
fsynced, then the manifest, then the directory, and only then is it renamed to
its final name and the parent directory fsynced. A directory named
``step-*`` (without ``.tmp``) therefore always holds a complete checkpoint; a
kill at any moment leaves at most a ``.tmp`` directory, which readers ignore and
the next save removes. Loading re-checks every checksum and falls back to the
previous checkpoint, with a warning, when the newest is damaged.
"""
import hashlib
import io
import json
import os
import re
import shutil
import sys
import uuid

import torch
from mpi4py import MPI

MANIFEST = "MANIFEST.json"
FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")


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


def save(directory: str, step: int, replicated: dict, per_rank: dict, comm: MPI.Comm, keep: int = 3) -> str:
    """Write checkpoint ``step`` collectively; returns its final path on every rank.

    ``replicated`` is taken from rank 0; every rank contributes ``per_rank``.
    Raises CheckpointError on every rank if any rank failed to write its part.
    """
    rank, world = comm.Get_rank(), comm.Get_size()
    final = os.path.join(directory, f"step-{step:08d}")
    tmp = None
    if rank == 0:
        os.makedirs(directory, exist_ok=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        os.makedirs(tmp)
    tmp = comm.bcast(tmp, root=0)
    entry, error = None, None
    try:
        name = f"rank-{rank:05d}.pt"
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
            manifest = {"format": FORMAT, "step": step, "world_size": world, "files": files}
            _write_file(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=1).encode())
            _fsync_dir(tmp)
            if os.path.exists(final):  # an earlier run of the same step: the new one replaces it
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(directory)
            _prune(directory, keep)
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            outcome = f"{type(e).__name__}: {e}"
    outcome = comm.bcast(outcome, root=0)
    if outcome:
        raise CheckpointError(f"checkpoint step {step} in {directory} was not written: {outcome}")
    return final


def _prune(directory: str, keep: int) -> None:
    steps = sorted(_complete_steps(directory), reverse=True)
    for step in steps[keep:]:
        shutil.rmtree(os.path.join(directory, f"step-{step:08d}"), ignore_errors=True)
    # Leftovers of writers killed mid-way.
    for name in os.listdir(directory):
        if ".tmp-" in name and name.startswith("step-"):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _complete_steps(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return [int(m.group(1)) for m in map(_STEP_DIR.match, os.listdir(directory)) if m]


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


def find_latest(directory: str, comm: MPI.Comm) -> tuple[str | None, dict | None]:
    """The newest valid checkpoint in ``directory`` and its manifest, or (None, None); collective.

    Rank 0 checks the checksums of every file, newest first, and warns about
    each damaged checkpoint it skips; the choice is broadcast.
    """
    choice = (None, None)
    if comm.Get_rank() == 0:
        for step in sorted(_complete_steps(directory), reverse=True):
            path = os.path.join(directory, f"step-{step:08d}")
            try:
                choice = (path, verify(path))
                break
            except CheckpointError as e:
                print(f"ringtrain: warning: checkpoint {path} is damaged ({e}); falling back to an older one",
                      file=sys.stderr, flush=True)
    return comm.bcast(choice, root=0)


def load_part(path: str, name: str, manifest: dict):
    """Load one file of a verified checkpoint, checking its checksum again, with weights_only=True."""
    with open(os.path.join(path, name), "rb") as f:
        data = f.read()
    want = manifest["files"].get(name)
    if want is None:
        raise CheckpointError(f"{path} has no {name}")
    if hashlib.sha256(data).hexdigest() != want["sha256"]:
        raise CheckpointError(f"{path}/{name} changed since it was verified")
    return torch.load(io.BytesIO(data), weights_only=True)
