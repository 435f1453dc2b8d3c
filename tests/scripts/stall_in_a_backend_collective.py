"""Rank 1 stops (SIGSTOP) while the others wait for it in an all_reduce on the ringtrain backend."""
import os
import signal
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

import ringtrain.distributed

ringtrain.distributed.init(timeout=timedelta(seconds=float(sys.argv[1])))
dist.all_reduce(torch.ones(4))  # everyone is here
print(f"rank {dist.get_rank()} ready", flush=True)
if dist.get_rank() == 1:
    os.kill(os.getpid(), signal.SIGSTOP)
dist.all_reduce(torch.ones(4))
print(f"rank {dist.get_rank()} passed the stalled collective", flush=True)
