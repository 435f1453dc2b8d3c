"""kill -9 a checkpoint writer at random moments and check what loads: the fault benchmark, and a test, run it."""
import os
import random
import signal
import subprocess
import sys
import time

import torch
from mpi4py import MPI

from ringtrain import checkpoint

WRITER = os.path.join(os.path.dirname(__file__), "checkpoint_writer.py")


def one_trial(directory: str, rng: random.Random) -> str | None:
    """Run the writer, kill -9 it after a random delay, then load the newest valid checkpoint.

    Returns None if what loads is right (or nothing was complete yet), else what was wrong.
    """
    writer = subprocess.Popen([sys.executable, WRITER, directory], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    writer.stdout.readline()  # "writing": imports are done
    time.sleep(rng.uniform(0.0, 0.4))  # a save takes a few ms, so this lands anywhere in one
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    path, manifest = checkpoint.find_latest(directory, MPI.COMM_SELF)
    if path is None:
        return None
    try:
        replicated = checkpoint.load_part(path, "replicated.pt", manifest)
        mine = checkpoint.load_part(path, "rank-00000.pt", manifest)
    except Exception as e:
        return f"{path}: verified but failed to load: {e}"
    step = manifest["step"]
    ok = (replicated["step"] == step and torch.all(replicated["weights"] == step)
          and torch.all(replicated["bias"] == step) and torch.all(mine["rank_state"] == step))
    return None if ok else f"{path}: contents are not those of step {step}"
