"""Byte-level token files: the default corpus is the running Python's standard library.

Every Python install ships its standard-library sources, so the default job
needs no download. The ``.py`` files under ``sysconfig``'s ``stdlib`` path
(site-packages excluded) are concatenated in sorted path order into one file of
uint8 tokens. Rank 0 lists the files (refusing any that is not a regular
file: files.py), reuses the cache if it proves intact, or else builds it
(token_cache.py), and broadcasts the outcome; every rank then reads it with
``pread`` (token_reader.py). A signal while rank 0 reads stops every rank
with Preempted (exit code 75) rather than waiting for the read to end.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

from mpi4py import MPI

from ..fault.errors import UsageError
from ..fault.signals import Preempted
from . import token_cache
from .files import default_corpus_files, list_corpus
from .stop_request import StopRequest, Stopped
from .token_cache import cache_dir
from .token_reader import TokenReader

__all__ = ["TokenFile", "cache_dir", "default_corpus_files", "open_tokens"]


@dataclass(frozen=True)
class TokenFile:
    """The token cache as a sliceable reader, where it came from, and its fingerprint (fingerprint.py)."""
    tokens: TokenReader
    path: Path
    source: str
    fingerprint: dict


def open_tokens(data: str | None, comm: MPI.Comm = MPI.COMM_WORLD) -> TokenFile:
    """Token file for ``data`` (a text file, a directory of text files, or None for the stdlib corpus).

    Collective: rank 0 checks or builds the cache, every rank opens it. Every
    rank raises the same UsageError for bad data, and Preempted if rank 0 was
    signalled while reading.

    >>> t = open_tokens(__file__, MPI.COMM_SELF)
    >>> bytes(t.tokens[0:len(t.tokens)]) == open(__file__, "rb").read(), t.fingerprint["files"][0][0]
    (True, 'corpus.py')
    """
    source = "the Python standard library sources" if data is None else str(data)
    outcome = _prepare(data, source) if comm.Get_rank() == 0 else None
    kind, detail = comm.bcast(outcome, root=0)
    if kind == "usage":
        raise UsageError(detail, agreed=True)
    if kind == "failed":
        raise UsageError(f"--data: building the token file from {source} failed on rank 0: {detail}", agreed=True)
    if kind == "stopped":
        if comm.Get_rank() == 0:
            print(f"ringtrain: {detail} while rank 0 read {source} into the token cache: stopped before the first "
                  "step, nothing to checkpoint (exit code 75); the next start reads it again", file=sys.stderr,
                  flush=True)
        raise Preempted(0, f"{detail} during start-up")
    path, side = detail
    fp = side["source"]
    return TokenFile(TokenReader(path, fp["tokens"], fp["blocks"], block=fp["block"]), Path(path), source, fp)


def _prepare(data: str | None, source: str) -> tuple[str, object]:
    """Rank 0: ("ok", (cache path, sidecar)), or ("usage" | "failed" | "stopped", what to say)."""
    try:
        with StopRequest() as stop:
            root, entries = list_corpus(data)
            cache, sidecar = token_cache.cache_paths(entries)
            side, why = token_cache.verified(cache, sidecar, entries, stop)
            if side is None:
                if why:
                    print(f"ringtrain: warning: the token cache {cache} is damaged ({why}); rebuilding it from "
                          f"{source}", file=sys.stderr, flush=True)
                side = token_cache.build(cache, sidecar, entries, root, stop)
        return "ok", (str(cache), side)
    except UsageError as e:
        return "usage", str(e)
    except Stopped as e:
        return "stopped", str(e)
    except Exception as e:  # shared with every rank, so all raise together
        return "failed", f"{type(e).__name__}: {e}"
