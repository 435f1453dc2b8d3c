"""Fault-tolerance figures: kill -9 trials on checkpoint writes, death-to-exit time, checkpoint cost.

    python benchmarks/fault_tolerance.py --trials 200 --json benchmarks/results/fault_tolerance.json

1. ``--trials`` times: start a process that writes checkpoints back to back,
   kill -9 it at a random moment, load the newest valid checkpoint and check
   that every tensor in it holds its own step. Counts wrong loads.
2. ``--deaths`` times: a 3-rank demo job with default settings (``--timeout``
   15 s) under ``srun --mpi=pmi2`` (start slurm/local-cluster.sh and export
   SLURM_CONF first); kill -9 one rank and time until every other rank has
   exited. srun leaves the survivors running, so ringtrain's deadline is what
   ends them. (MPICH's mpiexec instead kills the whole job itself within 0.1 s.)
3. The demo model's checkpoint: bytes and milliseconds, from a 4-rank run's
   metrics.jsonl (``--checkpoint-every 25``).
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from mpi4py import MPI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.kill_trials import one_trial  # noqa: E402
from ringtrain.fault.supervise import mpiexec_path  # noqa: E402
from ringtrain.results import load_result, metadata, write_result  # noqa: E402


def kill_trials(n: int, seed: int) -> dict:
    rng, wrong, loaded = random.Random(seed), [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            d = os.path.join(tmp, f"t{i}")
            problem = one_trial(d, rng)
            if problem:
                wrong.append(problem)
            loaded += any(name.startswith("step-") and ".tmp" not in name for name in os.listdir(d)) \
                if os.path.isdir(d) else 0
            if (i + 1) % 25 == 0:
                print(f"  {i + 1}/{n} trials, {len(wrong)} wrong loads", flush=True)
    return {"trials": n, "wrong_loads": len(wrong), "trials_with_a_checkpoint": loaded, "problems": wrong[:10]}


def death_to_exit(repeats: int) -> dict:
    if not os.environ.get("SLURM_CONF") or not shutil.which("srun"):
        print("  skipped: needs srun (bash slurm/local-cluster.sh start; export SLURM_CONF=...)", flush=True)
        return {"skipped": "no srun"}
    times, named = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            cmd = ["srun", "--mpi=pmi2", "-n", "3", sys.executable, "-m", "ringtrain", "train",
                   "--steps", "100000", "--log-every", "1000", "--out-dir", out]
            job = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            path = os.path.join(out, "metrics.jsonl")
            while True:
                rows = [json.loads(x) for x in open(path)] if os.path.exists(path) else []
                if any(r.get("step", 0) >= 5 and "loss" in r for r in rows):
                    break
                time.sleep(0.2)
            pid = [r for r in rows if r.get("event") == "start"][-1]["ranks"][2]["pid"]
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            err = job.communicate(timeout=120)[0]
            times.append(time.monotonic() - t0)
            named.append(err.count("rank 2 did not answer"))
            print(f"  death to exit: {times[-1]:.1f} s; {named[-1]} of 2 survivors named rank 2", flush=True)
    return {"launcher": "srun --mpi=pmi2", "seconds": times, "median_seconds": float(np.median(times)),
            "max_seconds": max(times), "survivors_naming_the_dead_rank": named}


def checkpoint_cost() -> dict:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([mpiexec_path(), "-n", "4", sys.executable, "-m", "ringtrain", "train", "--steps", "150",
                        "--checkpoint-dir", os.path.join(out, "ckpt"), "--checkpoint-every", "25", "--out-dir", out,
                        "--sample-tokens", "0"], cwd=ROOT, check=True, capture_output=True, timeout=600)
        rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    saves = [r for r in rows if r.get("event") == "checkpoint"]
    steps = [r["step_seconds"] for r in rows if "step_seconds" in r]
    return {"checkpoints": len(saves), "megabytes": saves[0]["bytes"] / 1e6,
            "median_ms": 1e3 * float(np.median([r["seconds"] for r in saves])),
            "median_step_ms": 1e3 * float(np.median(steps)), "world_size": 4}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--deaths", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--parts", default="kill,death,checkpoint", help="which measurements (default: all three)")
    p.add_argument("--json", help="write the results; an existing file keeps the parts not rerun")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    # An existing file keeps the parts not rerun; the meta block is this run's.
    result = load_result(args.json) if args.json and os.path.exists(args.json) else {}
    result.pop("benchmark", None)
    result["meta"] = metadata(MPI.COMM_SELF, args)
    if "kill" in parts:
        print(f"kill -9 during checkpoint writes, {args.trials} trials:", flush=True)
        result["kill_trials"] = kill_trials(args.trials, args.seed)
    if "death" in parts:
        print(f"death of one rank of 3 under srun, default --timeout, {args.deaths} times:", flush=True)
        result["death_to_exit"] = death_to_exit(args.deaths)
    if "checkpoint" in parts:
        print("checkpoint cost of the demo model:", flush=True)
        result["checkpoint"] = checkpoint_cost()
    k, d, c = result.get("kill_trials"), result.get("death_to_exit"), result.get("checkpoint")
    if k:
        print(f"wrong loads: {k['wrong_loads']} of {k['trials']} trials ({k['trials_with_a_checkpoint']} had a checkpoint)")
    if d and "seconds" in d:
        print(f"death to exit of every other rank: median {d['median_seconds']:.1f} s, max {d['max_seconds']:.1f} s")
    if c:
        print(f"demo checkpoint: {c['megabytes']:.1f} MB in {c['median_ms']:.0f} ms (median of {c['checkpoints']}); "
              f"a training step takes {c['median_step_ms']:.0f} ms at {c['world_size']} ranks")
    if args.json:
        meta = result.pop("meta")
        write_result(args.json, "fault_tolerance", meta, **result)
    return 1 if k and k["wrong_loads"] else 0


if __name__ == "__main__":
    sys.exit(main())
