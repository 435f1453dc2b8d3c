"""What a token cache was built from, as a plain dict a checkpoint can keep (torch.load weights_only=True reads it).

    {"root": "/abs/corpus", "files": [["a.txt", 1234, 1764698401000000000], ...],
     "tokens": 1234, "block": 1048576, "blocks": [CRC-32 of each block of the concatenated bytes],
     "digest": "9f2c..."}

``files`` holds each file's name inside the corpus, size and mtime (ns) when it
was read. ``digest`` (SHA-256 of the token count and the block checksums)
decides whether two fingerprints are of the same data: the same bytes in the
same order train the same way, whatever the path, the names or the mtimes.
The blocks are checksummed with CRC-32 because it runs at ~1 ms per MiB here
(SHA-256 2.3, BLAKE2b 3.5): building reads every byte anyway, so the content
hash of a first build costs that much and nothing else. A change that keeps
every block's CRC-32 is a 1-in-2^32 chance per block: enough for accidents, not
for an adversary.

Re-reading the corpus at every start would cost as much as building the
cache. A reuse instead stats every file (sizes and mtimes must match) and
compares ``SAMPLES`` chunks of 4 KiB spread over the content with their
checksum at build time: this catches most in-place rewrites that keep a file's
size and mtime, not all of them.
"""
import bisect
import hashlib
import os
import time
import zlib

from .files import Entry, open_regular

SAMPLES, SAMPLE_BYTES = 64, 4096


def digest(tokens: int, blocks: list[int]) -> str:
    """The content's identity from its block checksums.

    >>> digest(3, [1, 2]) == digest(3, [1, 2]) != digest(3, [2, 1])
    True
    """
    return hashlib.sha256(f"{tokens}:{','.join(map(str, blocks))}".encode()).hexdigest()


def sample_spans(tokens: int) -> list[tuple[int, int]]:
    """(offset, length) of the sampled chunks: all of a small corpus, else SAMPLES evenly spread ones.

    >>> sample_spans(10), len(sample_spans(10**9)), sample_spans(10**9)[-1][0] + SAMPLE_BYTES
    ([(0, 10)], 64, 1000000000)
    """
    if tokens <= SAMPLES * SAMPLE_BYTES:
        return [(0, tokens)]
    last = tokens - SAMPLE_BYTES
    return [(i * last // (SAMPLES - 1), SAMPLE_BYTES) for i in range(SAMPLES)]


def samples_crc(read, tokens: int) -> int:
    """CRC-32 of the sampled chunks, where ``read(offset, length)`` returns those bytes of the content."""
    crc = 0
    for offset, length in sample_spans(tokens):
        crc = zlib.crc32(read(offset, length), crc)
    return crc


def source_reader(entries: list[Entry]):
    """``read(offset, length)`` over the concatenation of ``entries``' files, as they are now on disk."""
    starts, total = [], 0
    for e in entries:
        starts.append(total)
        total += e.size

    def read(offset: int, length: int) -> bytes:
        parts = []
        i = bisect.bisect_right(starts, offset) - 1
        while length > 0 and i < len(entries):
            within = offset - starts[i]
            take = min(length, entries[i].size - within)
            if take > 0:
                fd = open_regular(entries[i])
                try:
                    parts.append(os.pread(fd, take, within))
                finally:
                    os.close(fd)
                offset, length = offset + take, length - take
            i += 1
        return b"".join(parts)

    return read


def _when(ns: int, date: bool = True) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", time.localtime(ns / 1e9))


def _file_change(shown: str | None, was: list, now: list) -> str | None:
    """``shown: 1,234 bytes -> 1,300 bytes, modified 2026-12-02 18:00:01 -> 18:05:12``, or None if neither changed.

    Without ``shown`` (a single file, which the caller names) the phrase starts at the sizes."""
    parts = []
    if was[1] != now[1]:
        parts.append(f"{was[1]:,} bytes -> {now[1]:,} bytes")
    if was[2] != now[2]:
        same_day = _when(was[2])[:10] == _when(now[2])[:10]
        parts.append(f"modified {_when(was[2])} -> {_when(now[2], date=not same_day)}")
    if not parts:
        return None
    return ", ".join(parts) if shown is None else f"{shown}: {', '.join(parts)}"


def differences(was: dict, now: dict, shown_root: str) -> list[str]:
    """What changed from fingerprint ``was`` to ``now``, one phrase per file; [] if the content is the same.

    ``shown_root`` is how the user named the corpus (the --data path): a
    directory's files are shown as ``shown_root/name``; a single file's change
    is given without its name, which the caller's message starts with.

    >>> a = {"files": [["x.txt", 10, 0]], "tokens": 10, "block": 4096, "blocks": [1], "digest": "a"}
    >>> differences(a, {**a, "files": [["x.txt", 12, 0]], "tokens": 12, "digest": "b"}, "x.txt")
    ['10 bytes -> 12 bytes']
    """
    if was["digest"] == now["digest"]:
        return []
    old = {name: [name, size, mtime] for name, size, mtime in was["files"]}
    new = {name: [name, size, mtime] for name, size, mtime in now["files"]}
    if len(old) == len(new) == 1:  # one file on each side: the same --data, maybe under another name
        return [_file_change(None, *old.values(), *new.values())
                or "content changed (same size and modification time)"]
    show = lambda name: os.path.join(shown_root, name)  # noqa: E731
    found = [f"{show(n)} added" for n in new if n not in old] + [f"{show(n)} removed" for n in old if n not in new]
    found += [c for n in new if n in old for c in [_file_change(show(n), old[n], new[n])] if c]
    if not found:
        found = [f"content changed in {', '.join(map(show, _in_changed_blocks(was, now)[:3])) or 'the corpus'} "
                 "(same sizes and modification times)"]
    return found


def _in_changed_blocks(was: dict, now: dict) -> list[str]:
    """The files (of ``now``) whose bytes share a block whose checksum changed: same layout on both sides only."""
    changed = {i for i, (a, b) in enumerate(zip(was["blocks"], now["blocks"])) if a != b}
    block = now["block"]
    names, start = [], 0
    for name, size, _ in now["files"]:
        if any(b in changed for b in range(start // block, (start + max(size, 1) - 1) // block + 1)):
            names.append(name)
        start += size
    return names
