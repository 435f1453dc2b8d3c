"""``python -m ringtrain launch -n N --max-restarts R -- train ARGS``: mpiexec, restarted on failure.

Each attempt runs ``mpiexec -n N python -m ringtrain ARGS``. When it fails, the
supervisor says why, waits (1 s, 2 s, 4 s, ... up to 30 s) and runs it again;
``train`` resumes from the newest valid checkpoint by itself (``--resume auto``
is its default), so nothing done before the last checkpoint is lost. Exit codes
that a restart cannot cure are passed on without one: 75 (stopped by a signal,
checkpoint written), 2 (bad input, or the checkpoint directory is locked by
another run) and 3 (the loss diverged; a bit-exact resume would diverge
again). So is a signal to the supervisor itself, which it forwards to the
job. The supervisor's exit code is the last attempt's.

When a rank dies, MPICH's mpiexec ends the other ranks at once and reports the
dead process's PID (the ``start`` line of metrics.jsonl maps PIDs to ranks);
when a rank stalls, ringtrain's deadline (``--timeout``) ends the job.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

from .exit_codes import EXIT_DIVERGED, EXIT_ERROR, EXIT_PREEMPTED, EXIT_TIMEOUT, EXIT_USAGE

_MEANING = {EXIT_ERROR: "an error on some rank", EXIT_TIMEOUT: "a collective missed its deadline (a rank died or stalled)",
            EXIT_PREEMPTED: "stopped by a signal after a checkpoint", EXIT_USAGE: "bad input; see the message above",
            EXIT_DIVERGED: "a diverged loss"}
FINAL = (EXIT_PREEMPTED, EXIT_USAGE, EXIT_DIVERGED)  # a restart cannot cure these


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--np", type=int, required=True, dest="np", help="number of ranks")
    p.add_argument("--max-restarts", type=int, default=3, help="restarts after a failure (default 3)")
    p.add_argument("--mpiexec", default=None, help="the launcher (default: the mpiexec beside this Python)")
    p.add_argument("--mpiexec-args", default="", help="extra launcher arguments, as one string")
    p.add_argument("job", nargs=argparse.REMAINDER, help="-- then ringtrain's arguments, e.g. -- train --steps 100")


def mpiexec_path(explicit: str | None = None) -> str:
    candidates = [explicit, os.environ.get("MPIEXEC"), os.path.join(os.path.dirname(sys.executable), "mpiexec"),
                  shutil.which("mpiexec")]
    for c in candidates:
        if c and os.path.exists(c):
            return c
    raise SystemExit("launch: no mpiexec found; pass --mpiexec or install ringtrain[mpich]")


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit code {code}" + (f" ({_MEANING[code]})" if code in _MEANING else "")


def main(args) -> int:
    command = args.job[1:] if args.job[:1] == ["--"] else args.job
    if args.np < 1 or args.max_restarts < 0:
        raise SystemExit(f"launch: need -n >= 1 and --max-restarts >= 0, got {args.np}, {args.max_restarts}")
    if not command:
        raise SystemExit("launch: say what to run after --, e.g. launch -n 4 -- train --checkpoint-dir ckpt")
    if command[0] == "train" and "--checkpoint-dir" not in command:
        print("launch: warning: train without --checkpoint-dir restarts from step 0", file=sys.stderr, flush=True)
    mpiexec = mpiexec_path(args.mpiexec)
    cmd = [mpiexec, "-n", str(args.np), *args.mpiexec_args.split(),
           sys.executable, "-m", "ringtrain", *command]
    interrupted = []
    job = None

    def forward(signum, frame):
        interrupted.append(signum)
        if job is not None and job.poll() is None:
            job.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, forward)
    attempt = 0
    while True:
        attempt += 1
        print(f"launch: attempt {attempt}: {' '.join(cmd)}", flush=True)
        job = subprocess.Popen(cmd)
        code = job.wait()
        if code == 0:
            print(f"launch: attempt {attempt} finished", flush=True)
            return 0
        if interrupted or code in FINAL:
            print(f"launch: attempt {attempt} ended with {describe_exit(code)}; not restarting", flush=True)
            return code if code > 0 else 128 - code
        if attempt > args.max_restarts:
            print(f"launch: attempt {attempt} ended with {describe_exit(code)}; no restarts left "
                  f"(--max-restarts {args.max_restarts})", flush=True)
            return code if code > 0 else 128 - code
        wait = min(30, 2 ** (attempt - 1))
        print(f"launch: attempt {attempt} ended with {describe_exit(code)}; restarting from the latest "
              f"checkpoint in {wait} s (restart {attempt} of {args.max_restarts})", flush=True)
        time.sleep(wait)

