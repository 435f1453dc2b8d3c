"""What happens to old checkpoints: nothing is deleted unless provably redundant.

- A damaged or unloadable checkpoint is renamed ``damaged-step-NNNNNNNN``
  (with a suffix if that exists), never deleted, so a person can inspect it.
- A checkpoint that a new one of the same step would replace is renamed
  ``replaced-step-NNNNNNNN-...``.
- A run that starts afresh (``--resume none``) in a directory that holds
  checkpoints moves them into ``superseded-<UTC time>/``, so that a later
  ``--resume auto`` continues the new run, not the old one.
- Pruning (``keep``) deletes only checkpoints of this run's lineage (the
  ``lineage`` in their manifest: a fresh run starts one, a resumed run
  continues its checkpoint's), and only those older than the ``keep`` newest
  that verify.
- ``.tmp-`` directories are removed only when their writer is this process,
  or a process on this host that no longer exists, or a writer named dead
  by the lock it left behind.
"""
import json
import os
import re
import shutil
import socket
import time

STEP_DIR = re.compile(r"^step-(\d{8})$")
TMP_DIR = re.compile(r"^step-\d{8}\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")
MANIFEST = "MANIFEST.json"


def complete_steps(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return [int(m.group(1)) for m in map(STEP_DIR.match, os.listdir(directory)) if m]


def _free_name(directory: str, name: str) -> str:
    path, n = os.path.join(directory, name), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(directory, f"{name}.{n}")
    return path


def move_aside(path: str, prefix: str) -> str:
    """Rename checkpoint ``path`` to ``<prefix>-<its name>`` beside it; returns the new path."""
    directory, name = os.path.split(os.path.normpath(path))
    target = _free_name(directory, f"{prefix}-{name}")
    os.rename(path, target)
    return target


def supersede(directory: str) -> str | None:
    """Move every complete checkpoint in ``directory`` into a new ``superseded-<time>/``; its path, or None."""
    steps = complete_steps(directory)
    if not steps:
        return None
    target = _free_name(directory, time.strftime("superseded-%Y%m%dT%H%M%SZ", time.gmtime()))
    os.makedirs(target)
    for step in steps:
        name = f"step-{step:08d}"
        os.rename(os.path.join(directory, name), os.path.join(target, name))
    return target


def lineage_of(path: str) -> str | None:
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            return json.load(f).get("lineage")
    except (OSError, ValueError, AttributeError):
        return None


def prune(directory: str, keep: int, lineage: str, verified) -> None:
    """Delete this lineage's checkpoints older than its ``keep`` newest that ``verified(path)`` accepts.

    A checkpoint of this lineage that fails ``verified`` is moved aside as damaged instead.
    """
    good = 0
    for step in sorted(complete_steps(directory), reverse=True):
        path = os.path.join(directory, f"step-{step:08d}")
        if lineage_of(path) != lineage:
            continue
        if good >= keep:
            shutil.rmtree(path, ignore_errors=True)
        elif verified(path):
            good += 1
        else:
            move_aside(path, "damaged")


def remove_leftovers(directory: str, dead_writers=()) -> None:
    """Remove ``.tmp-`` directories whose writer is this process, or provably dead."""
    host, me = socket.gethostname(), os.getpid()
    for name in os.listdir(directory):
        m = TMP_DIR.match(name)
        if m is None:
            continue  # not ours to judge (another tool's, or an older ringtrain's)
        writer_host, pid = m.group("host"), int(m.group("pid"))
        if (writer_host == host and (pid == me or not _alive(pid))) or f"{writer_host}-{pid}" in dead_writers:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
