"""Checkpoints that survive kill -9: atomic directories, checksummed manifests, fallback on load."""
from .store import CheckpointError, find_latest, load_part, save, verify

__all__ = ["CheckpointError", "find_latest", "load_part", "save", "verify"]
