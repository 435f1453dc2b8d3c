"""Rank 1 raises after the ringtrain backend started; the others go on to a collective that it never joins."""
import torch
import torch.distributed as dist

import ringtrain.distributed  # noqa: F401 (registers the backend; an uncaught exception aborts the job)

dist.init_process_group("ringtrain")
if dist.get_rank() == 1:
    raise RuntimeError("rank 1 gives up")
dist.all_reduce(torch.ones(4))
print(f"rank {dist.get_rank()} finished", flush=True)
