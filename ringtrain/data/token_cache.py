"""The token cache: a corpus's bytes in one file, and a sidecar by which every start proves it intact.

Under ``$RINGTRAIN_CACHE`` (default ``~/.cache/ringtrain``), for key K:

- ``tokens-K.u8``: the files' bytes, concatenated in the corpus's order (uint8 tokens);
- ``tokens-K.json``: ``{"format", "samples", "source", "checksum"}``: ``source`` is
  the fingerprint (fingerprint.py: every file's name, size and mtime, the
  token count and a CRC-32 per 1 MiB block), ``samples`` the CRC-32 of the
  sampled chunks of the content, ``checksum`` the SHA-256 of the rest.

K hashes every file's real path, size and mtime, so ``./a.txt`` and ``a.txt``
share a cache, and a changed file gets a new cache rather than a rewrite of
one that a running job reads. Rank 0 writes both (temp file, fsync,
os.replace), the sidecar last, then fsyncs the directory: a crash in between
leaves a cache without its sidecar, or with a stale one, which the next start
rebuilds.

A reuse (``verified``) checks on rank 0, in this order: the sidecar parses and
matches its own checksum; it lists exactly these files with these sizes and
mtimes; the sampled chunks of the sources still match; the cache has the
sidecar's size; every block matches its CRC-32 (~1 ms per MiB). A cache that
fails any of these is never used: it is rebuilt, and the reason is said in one line.
"""
import hashlib
import json
import os
import zlib
from pathlib import Path

from . import fingerprint
from .files import Entry, open_regular

FORMAT = 1
BLOCK = 1 << 20


def cache_dir() -> Path:
    return Path(os.environ.get("RINGTRAIN_CACHE", Path.home() / ".cache" / "ringtrain"))


def cache_paths(entries: list[Entry]) -> tuple[Path, Path]:
    """(token file, sidecar) for these files as they are now."""
    key = hashlib.sha256()
    for e in entries:
        key.update(f"{e.path}|{e.size}|{e.mtime_ns}\n".encode())
    stem = cache_dir() / f"tokens-{key.hexdigest()[:16]}"
    return stem.with_suffix(".u8"), stem.with_suffix(".json")


def _sealed(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _block_crcs(fd: int, tokens: int, stop):
    """Each block's CRC-32, read back from ``fd``; stops at a short read (the caller compares the count)."""
    crcs = []
    for offset in range(0, tokens, BLOCK):
        stop.check()
        data = os.pread(fd, min(BLOCK, tokens - offset), offset)
        crcs.append(zlib.crc32(data))
        if len(data) < min(BLOCK, tokens - offset):
            break
    return crcs


def verified(cache: Path, sidecar: Path, entries: list[Entry], stop) -> tuple[dict | None, str | None]:
    """(the sidecar, None) if ``cache`` is intact and built from ``entries``; else (None, why it is not).

    Why is None when there is no cache yet: a first build is nothing to report.
    """
    if not cache.exists():
        return None, None
    try:
        side = json.loads(sidecar.read_bytes())
        body = {k: v for k, v in side.items() if k != "checksum"}
        if side.get("checksum") != _sealed(body):
            return None, f"its sidecar {sidecar.name} does not match its own checksum"
        if side["format"] != FORMAT:
            return None, f"its sidecar {sidecar.name} has format {side['format']!r}, this ringtrain reads {FORMAT}"
        source = side["source"]
        tokens, blocks = source["tokens"], source["blocks"]
    except FileNotFoundError:
        return None, f"its sidecar {sidecar.name} is missing"
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return None, f"its sidecar {sidecar.name} is garbled: {type(e).__name__}"
    if source["files"] != [[e.name, e.size, e.mtime_ns] for e in entries]:
        return None, "its sidecar describes other files"
    if side["samples"] != fingerprint.samples_crc(fingerprint.source_reader(entries), tokens):
        return None, "the source's content changed without a change of size or modification time"
    with open(cache, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size != tokens:
            return None, f"it has {size:,} bytes, its sidecar says {tokens:,}"
        found = _block_crcs(f.fileno(), tokens, stop)
    bad = [i for i, (a, b) in enumerate(zip(found, blocks)) if a != b]
    if bad or len(found) != len(blocks):
        where = f"block {bad[0]}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else "") if bad else "a block"
        return None, f"{where} of {len(blocks)} fails its checksum"
    return side, None


def build(cache: Path, sidecar: Path, entries: list[Entry], root: str, stop) -> dict:
    """Write ``cache`` and its sidecar from ``entries``; returns the sidecar. Checks ``stop`` between chunks."""
    if not entries:
        raise ValueError("no files to read")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as w:
            blocks = _copy(entries, w, stop)
            w.flush()
            os.fsync(w.fileno())
            tokens = w.tell()
        if tokens == 0:
            raise ValueError("the files are empty")
        with open(tmp, "rb", buffering=0) as r:
            samples = fingerprint.samples_crc(lambda offset, n: os.pread(r.fileno(), n, offset), tokens)
        source = {"root": root, "files": [[e.name, e.size, e.mtime_ns] for e in entries], "tokens": tokens,
                  "block": BLOCK, "blocks": blocks, "digest": fingerprint.digest(tokens, blocks)}
        body = {"format": FORMAT, "samples": samples, "source": source}
        side = {**body, "checksum": _sealed(body)}
        os.replace(tmp, cache)
        _write_atomically(sidecar, json.dumps(side).encode())  # last: a sidecar vouches for a complete cache
    finally:
        if tmp.exists():
            tmp.unlink()
    return side


def _copy(entries: list[Entry], w, stop) -> list[int]:
    """Copy the files into ``w`` in order; returns each 1 MiB block's CRC-32 of what was written."""
    blocks, crc, filled = [], 0, 0
    for e in entries:
        stop.check()
        fd = open_regular(e)
        try:
            mtime, got = os.fstat(fd).st_mtime_ns, 0
            while True:
                stop.check()
                # Up to the end of the current block, so that each CRC covers exactly one block.
                chunk = os.read(fd, BLOCK - filled)
                if not chunk:
                    break
                w.write(chunk)
                crc, filled, got = zlib.crc32(chunk, crc), filled + len(chunk), got + len(chunk)
                if filled == BLOCK:
                    blocks.append(crc)
                    crc, filled = 0, 0
        finally:
            os.close(fd)
        if got != e.size or mtime != e.mtime_ns:
            raise ValueError(f"{e.name} changed while it was read ({e.size:,} bytes when listed, {got:,} read) — "
                             "run again once it is written")
    if filled:
        blocks.append(crc)
    return blocks


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
