"""What tracing costs: training with and without --trace, alternating in one job, and the per-call cost of a span.

    mpiexec -n 2 python benchmarks/trace_overhead.py --json benchmarks/results/overlap/trace_overhead.json

Each round trains the same job twice, tracing off then on (the order alternates
between rounds, so drift hits both alike); the step time is the median over
steps after the first few, and the overhead is the ratio of the medians over
rounds. The per-call cost of ``span`` is timed alone, off (the shared no-op) and on.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ringtrain.results import add_link_argument, metadata, write_result  # noqa: E402
from ringtrain.trace import NO_TRACE, Tracer  # noqa: E402
from ringtrain.train import TrainConfig, train  # noqa: E402


def per_call_ns(tracer, calls=200_000) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        with tracer.span("x", "compute", step=1):
            pass
    return (time.perf_counter_ns() - t0) / calls


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--bucket-cap-mb", type=float, default=1.0)
    p.add_argument("--json")
    add_link_argument(p)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    where = comm.bcast(tempfile.mkdtemp(prefix="ringtrain-trace-") if rank == 0 else None, root=0)
    medians = {"off": [], "on": []}
    for r in range(args.rounds):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            cfg = TrainConfig(steps=args.steps, eval_every=0, sample_tokens=0, log_every=args.steps,
                              bucket_cap_mb=args.bucket_cap_mb, out_dir=os.path.join(where, f"{mode}{r}"),
                              trace=os.path.join(where, f"trace{r}.json") if mode == "on" else None)
            result = train(cfg)
            medians[mode].append(float(np.median(result["step_seconds"][args.skip:])))
    spans = {"off_ns": per_call_ns(NO_TRACE)}
    tracer = Tracer(os.path.join(where, "calls.json"), MPI.COMM_SELF)
    spans["on_ns"] = per_call_ns(tracer)
    tracer.events.clear()
    tracer.close()
    meta = metadata(comm, args, link=args.link)  # collective: it counts the hosts
    if rank == 0:
        off, on = float(np.median(medians["off"])), float(np.median(medians["on"]))
        out = {"ranks": comm.Get_size(), "steps": args.steps, "rounds": args.rounds, "step_ms_off": 1e3 * off,
               "step_ms_on": 1e3 * on, "overhead": on / off - 1, "rounds_ms": {k: [1e3 * v for v in vs]
                                                                               for k, vs in medians.items()},
               "span_call_ns": spans}
        print(f"# trace overhead, {comm.Get_size()} ranks: step {1e3 * off:.1f} ms off, {1e3 * on:.1f} ms on "
              f"({100 * out['overhead']:+.1f}%); a span costs {spans['off_ns']:.0f} ns off, {spans['on_ns']:.0f} ns on")
        if args.json:
            write_result(args.json, "trace_overhead", meta, **out)


if __name__ == "__main__":
    main()
