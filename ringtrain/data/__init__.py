"""Training data: byte tokens from a text corpus, and deterministic per-rank batches."""
from .batches import Batches
from .corpus import TokenFile, default_corpus_files, open_tokens

__all__ = ["Batches", "TokenFile", "default_corpus_files", "open_tokens"]
