"""Checkpoints lost when runs race on one directory and get killed: the trial behind issue 11's target.

    python benchmarks/checkpoint_race.py --pairs 50 --json benchmarks/results/checkpoint_race.json

Each trial starts two runs of a tiny GPT on one fresh ``--checkpoint-dir``,
the second 0-1 s after the first (so they overlap in start-up, in training,
or not at all), and with probability ``--kill`` kills one that is still running
with kill -9 at a random moment. Then a third run resumes in the same directory
and trains to the end. A checkpoint counts as lost if

- a racing run exits other than 0, 2 (refused: the directory is locked) or -9
  (killed here), or the resuming run, which runs alone, exits other than 0,
- the resuming run starts before the newest checkpoint any run reported writing,
- its final checkpoint does not load, or
- anything was moved aside as damaged or replaced, or a ``.tmp-`` leftover remains.

Before the lock, two runs out of two lost a checkpoint this way.

Run it from a checkout nobody edits meanwhile (a ``git worktree``): every run
imports ringtrain from this file's tree.
"""
import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

from mpi4py import MPI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from ringtrain import checkpoint  # noqa: E402
from ringtrain.results import metadata, write_result  # noqa: E402

STEPS, EVERY = 3000, 100
TINY = ["--width", "32", "--layers", "1", "--heads", "2", "--context", "16", "--batch-size", "2",
        "--eval-windows", "4", "--sample-tokens", "0", "--log-every", "100000", "--checkpoint-every", str(EVERY)]


def start(directory: str, out: str, steps: int = STEPS) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ringtrain", "train", *TINY, "--steps", str(steps), "--checkpoint-dir", directory,
           "--out-dir", out]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def written(output: str) -> int:
    """The newest checkpoint step a run reported as written."""
    return max((int(s) for s in re.findall(r"checkpoint at step (\d+):", output)), default=0)


def one_pair(tmp: str, i: int, rng: random.Random, kill: float) -> dict:
    directory = os.path.join(tmp, f"ckpt{i}")
    runs = [start(directory, os.path.join(tmp, f"out{i}a"))]
    time.sleep(rng.uniform(0.0, 1.0))
    runs.append(start(directory, os.path.join(tmp, f"out{i}b")))
    killed = None
    if rng.random() < kill:
        time.sleep(rng.uniform(1.0, 9.0))  # start-up (imports) takes 2-3 s, training about 6 s more
        alive = [k for k, r in enumerate(runs) if r.poll() is None]
        if alive:  # the run that holds the directory, or both if neither has got that far
            killed = rng.choice(alive)
            runs[killed].send_signal(signal.SIGKILL)
    outputs = [r.communicate(timeout=300)[0] for r in runs]
    codes = [r.returncode for r in runs]
    resume = start(directory, os.path.join(tmp, f"out{i}c"))
    last = resume.communicate(timeout=300)[0]
    resumed = re.search(r"resumed from the checkpoint at step (\d+)", last)
    resumed_at = int(resumed.group(1)) if resumed else 0
    if "nothing to do" in last:
        resumed_at = STEPS
    problems = []
    for name, code, output in zip("ABC", codes + [resume.returncode], outputs + [last]):
        # The racing runs may be refused (2); the resume, which runs alone, must not be.
        if code not in ((0,) if name == "C" else (0, 2, -signal.SIGKILL)):
            problems.append(f"run {name} exit {code}: {output.strip()[-1500:]}")
    newest = max(written(o) for o in outputs)
    if resumed_at < newest:
        problems.append(f"resumed at step {resumed_at}, but step {newest} had been written")
    path, manifest = checkpoint.find_latest(directory, MPI.COMM_SELF)
    if path is None or manifest["step"] != STEPS:
        problems.append(f"the final checkpoint is {path}")
    names = os.listdir(directory) if os.path.isdir(directory) else []
    odd = [n for n in names if n.startswith(("damaged-", "replaced-")) or ".tmp-" in n]
    if odd:
        problems.append(f"left behind: {odd}")
    return {"codes": codes, "killed": killed, "newest_written": newest, "resumed_at": resumed_at,
            "refused": codes.count(2), "problems": problems}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=50, help="trials, each two racing runs plus a resume (default 50)")
    p.add_argument("--kill", type=float, default=0.5, help="share of trials with a kill -9 (default 0.5)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    rng, rows = random.Random(args.seed), []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            rows.append(one_pair(tmp, i, rng, args.kill))
            lost = sum(bool(r["problems"]) for r in rows)
            print(f"pair {i + 1}/{args.pairs}: exits {rows[-1]['codes']}, killed {rows[-1]['killed']}, "
                  f"resumed at {rows[-1]['resumed_at']} (newest written {rows[-1]['newest_written']}); "
                  f"trials with a lost checkpoint so far: {lost}", flush=True)
    summary = {"pairs": args.pairs, "runs": 3 * args.pairs, "racing_runs": 2 * args.pairs,
               "killed": sum(r["killed"] is not None for r in rows),
               "refused_by_the_lock": sum(r["refused"] for r in rows),
               "trials_with_a_lost_checkpoint": sum(bool(r["problems"]) for r in rows),
               "seconds": round(time.monotonic() - t0, 1), "trials": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "trials"}))
    if args.json:
        write_result(args.json, "checkpoint_race", metadata(MPI.COMM_SELF, args), **summary)
    return 1 if summary["trials_with_a_lost_checkpoint"] else 0


if __name__ == "__main__":
    sys.exit(main())
