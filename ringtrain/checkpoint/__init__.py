"""Checkpoints that survive kill -9: atomic directories, checksummed manifests, fallback on load."""
from .lock import DirectoryLock, LockLost
from .retention import supersede
from .store import CheckpointError, find_latest, load_part, loadable, new_lineage, rank_file, save, verify

__all__ = ["CheckpointError", "DirectoryLock", "LockLost", "find_latest", "load_part", "loadable", "new_lineage", "rank_file",
           "save", "supersede", "verify"]
