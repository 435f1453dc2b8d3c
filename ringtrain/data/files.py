"""Which paths a corpus is read from: regular files only, in a deterministic order, each with its size and mtime.

A FIFO, socket or device under ``--data`` would block the read (a FIFO with
no writer waits forever) or never end (``/dev/zero``), while the other ranks
wait in a broadcast. So every entry is classified with one ``stat`` before any
byte is read, and the first one that is not a regular file is refused by name.
Symbolic links are followed: a link to a regular file is a regular file.
``open_regular`` opens without blocking and checks again on the descriptor, so a
path that became a FIFO after the listing is refused too, never waited on.
"""
import os
import stat
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..fault.errors import UsageError

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


@dataclass(frozen=True)
class Entry:
    """One file of a corpus: where it is, its name inside the corpus, and its size and mtime when listed."""
    path: str
    name: str
    size: int
    mtime_ns: int


def file_kind(mode: int) -> str:
    """What ``mode`` (an ``st_mode``) is, in words, for a message.

    >>> file_kind(os.stat(".").st_mode)
    'a directory'
    """
    for test, words in _KINDS:
        if test(mode):
            return words
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def default_corpus_files() -> list[Path]:
    """The interpreter's standard-library .py files in a deterministic order."""
    root = sysconfig.get_paths()["stdlib"]
    return [Path(root) / name for name in _walk(root, suffixes=(".py",))]


def _walk(root: str, suffixes=None) -> list[str]:
    """The names (relative, with /) of the files under ``root``, sorted by name. Strings, not Paths: 3x faster."""
    names, skip = [], len(root.rstrip(os.sep)) + 1
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        inside = dirpath[skip:]
        names.extend(f"{inside}/{f}" if inside else f for f in filenames
                     if suffixes is None or f.endswith(suffixes))
    return sorted(names)


def list_corpus(data: str | None) -> tuple[str, list[Entry]]:
    """(the corpus's root, its files): ``data`` is a text file, a directory of them, or None for the stdlib.

    Raises UsageError naming the first entry that is not a regular file.
    Each entry's path is under the root's real path, so ``./d`` and ``d`` list
    the same paths (and share a token cache).

    >>> root, entries = list_corpus(__file__)
    >>> [e.name for e in entries], entries[0].size == os.path.getsize(__file__)
    (['files.py'], True)
    """
    if data is None:
        root = sysconfig.get_paths()["stdlib"]
        shown, names = f"the Python standard library ({root})", _walk(root, suffixes=(".py",))
    else:
        root, shown = str(data), f"--data {data}"
        try:
            mode = os.stat(root).st_mode
        except FileNotFoundError:
            raise UsageError(f"{shown}: no such file or directory — give a text file, or a directory of "
                             "them") from None
        if not stat.S_ISDIR(mode) and not stat.S_ISREG(mode):
            raise UsageError(f"{shown}: it is {file_kind(mode)}, not a regular file or a directory — give a text "
                             "file, or a directory of them")
        names = None if stat.S_ISREG(mode) else _walk(root)
    real = os.path.realpath(root)
    if names is None:  # a single file
        return real, [_entry(root, real, os.path.basename(real), shown)]
    return real, [_entry(os.path.join(root, name), os.path.join(real, name), name, shown) for name in names]


def _entry(typed: str, path: str, name: str, shown: str) -> Entry:
    """``typed``: the path as the user would write it, for messages; ``path``: under the real root."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{shown}: {typed} is a broken symbolic link — remove it, or point it at a file") from None
    if not stat.S_ISREG(st.st_mode):
        link = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
        raise UsageError(f"{shown}: {typed}{link} is {file_kind(st.st_mode)}, not a regular file — training reads "
                         "regular files only (a FIFO or device would block or never end); move it out of the "
                         "directory")
    return Entry(path, name, st.st_size, st.st_mtime_ns)


def open_regular(entry: Entry) -> int:
    """A read-only descriptor for ``entry``; raises ValueError if it is no longer a regular file.

    O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It
    changes nothing for a regular file.
    """
    fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ValueError(f"{entry.name} is now {file_kind(mode)}, not a regular file")
    return fd
