"""Training data: byte tokens from a text corpus or any map-style dataset, in deterministic per-rank batches."""
from .batches import Batches
from .corpus import TokenFile, default_corpus_files, open_tokens
from .dataset_batches import DatasetBatches
from .loader import Prefetcher, WorkerPrefetcher
from .sampler import ShardedSampler
from .token_reader import TokenReader

__all__ = ["Batches", "DatasetBatches", "Prefetcher", "ShardedSampler", "TokenFile", "TokenReader",
           "WorkerPrefetcher", "default_corpus_files", "open_tokens"]
