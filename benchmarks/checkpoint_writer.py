"""Writes checkpoints step after step until killed; every tensor holds its step number.

Used by the kill -9 tests and the stress benchmark: whatever moment the kill
lands, the newest valid checkpoint must load, and hold its own step everywhere.
"""
import sys

import torch
from mpi4py import MPI

from ringtrain import checkpoint

directory = sys.argv[1]
print("writing", flush=True)  # imports done: from here on a kill lands among the writes
step = 0
while True:
    step += 1
    replicated = {"step": step, "weights": torch.full((1 << 18,), float(step)), "bias": torch.full((7,), step)}
    checkpoint.save(directory, step, replicated, {"rank_state": torch.full((1000,), step)}, MPI.COMM_SELF, keep=2)
