"""What keeping buffers equal costs: a BatchNorm network's step with broadcast_buffers on and off, in one job.

    mpiexec -n 2 python benchmarks/buffer_sync_cost.py --json benchmarks/results/overlap/buffer_sync_cost.json

The network has 20 convolution + BatchNorm blocks (60 buffers: running mean and
variance and a counter each). Rounds alternate the two settings; the step time
is the median over steps, and the broadcast alone is timed too.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ringtrain import GradientReducer  # noqa: E402
from ringtrain.reducer.buffer_sync import BufferSync  # noqa: E402
from ringtrain.results import add_link_argument, metadata, write_result  # noqa: E402
from ringtrain.train.threads import set_torch_threads  # noqa: E402


def network(blocks=20, channels=16):
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3, channels, 3, padding=1)]
    for _ in range(blocks):
        layers += [torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.BatchNorm2d(channels), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels, 10))


def steps(model, reducer, x, y, n):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        reducer.synchronize()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--json")
    add_link_argument(p)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    set_torch_threads(comm)
    g = torch.Generator().manual_seed(comm.Get_rank())
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    runs = {"on": [], "off": []}
    for r in range(args.rounds):
        for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
            model = network()
            reducer = GradientReducer(model, broadcast_buffers=mode == "on")
            runs[mode] += steps(model, reducer, x, y, args.steps)[2:]
            reducer.close()
    model = network()
    sync = BufferSync(model, comm.Dup())
    calls = []
    for _ in range(200):
        t0 = time.perf_counter()
        sync()
        calls.append(time.perf_counter() - t0)
    on, off = (float(np.median(runs[m])) for m in ("on", "off"))
    meta = metadata(comm, args, link=args.link)  # collective: it counts the hosts
    if comm.Get_rank() == 0:
        out = {"ranks": comm.Get_size(), "buffers": sum(1 for _ in model.buffers()),
               "buffer_bytes": sum(b.numel() * b.element_size() for b in model.buffers()),
               "step_ms_on": 1e3 * on, "step_ms_off": 1e3 * off, "cost": on / off - 1,
               "broadcast_us": 1e6 * float(np.median(calls))}
        print(f"# buffers kept equal, {out['ranks']} ranks, {out['buffers']} buffers: step {1e3 * on:.2f} ms on, "
              f"{1e3 * off:.2f} ms off ({100 * out['cost']:+.1f}%); the broadcast alone {out['broadcast_us']:.0f} us")
        if args.json:
            write_result(args.json, "buffer_sync_cost", meta, **out)


if __name__ == "__main__":
    main()
