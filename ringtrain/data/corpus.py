"""Byte-level token files: the default corpus is the running Python's standard library.

Every Python install ships its standard-library sources, so the default job
needs no download. The ``.py`` files under ``sysconfig``'s ``stdlib`` path
(site-packages excluded) are concatenated in sorted path order into one file of
uint8 tokens, built once by rank 0 (atomically: temp file, fsync, rename) and
memory-mapped by every rank.
"""
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mpi4py import MPI

from ..fault.errors import UsageError

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def default_corpus_files() -> list[Path]:
    """The interpreter's standard-library .py files in a deterministic order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return _text_files(root, suffixes=(".py",))


def _text_files(root: Path, suffixes=None) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if suffixes is None or name.endswith(suffixes):
                files.append(Path(dirpath) / name)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


@dataclass(frozen=True)
class TokenFile:
    """A memory-mapped uint8 token array and where it came from."""
    tokens: np.ndarray
    path: Path
    source: str


def cache_dir() -> Path:
    return Path(os.environ.get("RINGTRAIN_CACHE", Path.home() / ".cache" / "ringtrain"))


def open_tokens(data: str | None, comm: MPI.Comm = MPI.COMM_WORLD) -> TokenFile:
    """Token file for ``data`` (a text file, a directory of text files, or None for the stdlib corpus).

    Collective: rank 0 builds the cached token file if needed, every rank maps it.
    """
    if data is None:
        files, source = default_corpus_files(), "the Python standard library sources"
    else:
        root = Path(data)
        if not root.exists():
            raise UsageError(f"--data {data}: no such file or directory — give a text file, or a directory of them")
        files = [root] if root.is_file() else _text_files(root)
        source = str(root)
    error, path = None, None
    if comm.Get_rank() == 0:
        try:
            path = _build(files, source)
        except Exception as e:  # shared with every rank below, so all raise together
            error = f"{type(e).__name__}: {e}"
    error, path = comm.bcast((error, path), root=0)
    if error:
        raise UsageError(f"--data: building the token file from {source} failed on rank 0: {error}", agreed=True)
    tokens = np.memmap(path, dtype=np.uint8, mode="r")
    return TokenFile(tokens, Path(path), source)


def _build(files: list[Path], source: str) -> str:
    if not files:
        raise ValueError(f"{source}: no files to read")
    # The cache key covers the file list, sizes and modification times.
    key = hashlib.sha256()
    for f in files:
        st = f.stat()
        key.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    out = cache_dir() / f"tokens-{key.hexdigest()[:16]}.u8"
    if out.exists():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as w:
        for f in files:
            w.write(f.read_bytes())
        w.flush()
        os.fsync(w.fileno())
    if tmp.stat().st_size == 0:
        tmp.unlink()
        raise ValueError(f"{source}: the files are empty")
    os.replace(tmp, out)
    return str(out)
