"""``python -m ringtrain launch -n N --max-restarts R -- train ARGS``: mpiexec, restarted on failure.

Each attempt runs ``mpiexec -n N python -m ringtrain ARGS``. When it fails, the
supervisor says why, waits (1 s, 2 s, 4 s, ... up to 30 s) and runs it again;
``train`` resumes from the newest valid checkpoint by itself (``--resume auto``
is its default), so nothing done before the last checkpoint is lost. Exit codes
that a restart cannot cure are passed on without one: 75 (stopped by a signal,
checkpoint written), 2 (bad input, or the checkpoint directory is locked by
another run) and 3 (the loss diverged; a bit-exact resume would diverge
again). So is a signal to the supervisor itself, which it forwards to the
job. The supervisor's exit code is the last attempt's. Any other code is
restarted: 1, 76, 255, and a rank killed by a signal, which MPICH's mpiexec
returns as the signal's number (9 for SIGKILL) and Open MPI's mpirun as 128 +
it (exit_codes.py has the measured table, and each line names the cause).
Each restart says where the run will resume, as the checkpoint directory
shows it then: ``restarting in 1 s (restart 1 of 3) from the checkpoint at
step 40 in ckpt``, or ``from step 0: no checkpoint in ckpt yet``.

When a rank dies, MPICH's mpiexec ends the other ranks at once and reports the
dead process's PID (the ``start`` line of metrics.jsonl maps PIDs to ranks);
when a rank stalls, ringtrain's deadline (``--timeout``) ends the job.

``--elastic`` restarts on the hosts that answer and grows back when the others
return (ringtrain/elastic/launch.py).
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from .. import environment
from .errors import UsageError
from .exit_codes import EXIT_DIVERGED, EXIT_PREEMPTED, EXIT_USAGE, describe

FINAL = (EXIT_PREEMPTED, EXIT_USAGE, EXIT_DIVERGED)  # a restart cannot cure these
# The checkpoint store's layout (checkpoint/store.py): complete checkpoints are step-NNNNNNNN/ with a
# MANIFEST.json written last. Read here from the listing, since importing the store imports torch.
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--np", type=int, required=True, dest="np", help="number of ranks")
    p.add_argument("--max-restarts", type=int, default=3, help="restarts after a failure (default 3)")
    p.add_argument("--mpiexec", default=None, help="the launcher (default: $MPIEXEC, else the mpiexec beside "
                                                   "this Python, else the one on PATH)")
    p.add_argument("--mpiexec-args", default="", help="extra launcher arguments, as one string")
    p.add_argument("--elastic", action="store_true", help="restart on the hosts that answer, and grow back to all "
                   "of them at a checkpoint when they return (for an MPI that cannot shrink in place: MPICH)")
    p.add_argument("--hosts", help="--elastic: the hosts and their slots, a:4,b:4 (default: --hostfile, else "
                                   "Slurm's allocation)")
    p.add_argument("--hostfile", help="--elastic: a file of host:slots lines")
    p.add_argument("--host-check", help="--elastic: a command that succeeds when {host} can run ranks (default: "
                                        "mpiexec -hosts {host} -n 1 true)")
    p.add_argument("--regrow-every", type=float, default=30.0, help="--elastic: seconds between checks of the "
                   "missing hosts while running short (default 30)")
    p.add_argument("--min-ranks", type=int, default=1, help="--elastic: fewer answering slots than this stop the "
                   "launch (exit code 76; default 1)")
    p.add_argument("job", nargs=argparse.REMAINDER, help="-- then ringtrain's arguments, e.g. -- train --steps 100")


def mpiexec_path(explicit: str | None = None) -> str:
    """The launcher: ``explicit`` (--mpiexec), else $MPIEXEC, else the mpiexec beside this Python, else PATH's.

    One that is asked for and not found is refused, rather than quietly replaced by another MPI's.
    """
    chosen = explicit or environment.value("MPIEXEC")
    if chosen:
        found = shutil.which(chosen)
        if found is None:
            said = f"--mpiexec {explicit}" if explicit else f"environment variable MPIEXEC={chosen!r}"
            raise UsageError(f"launch: {said}: no such executable — the path of an mpiexec, or a name on PATH")
        return found
    for c in (os.path.join(os.path.dirname(sys.executable), "mpiexec"), shutil.which("mpiexec")):
        if c and os.path.exists(c):
            return c
    raise UsageError("launch: no mpiexec found — pass --mpiexec, set MPIEXEC, or install ringtrain[mpich]")


def describe_exit(code: int) -> str:
    """What an attempt's exit code means (fault/exit_codes.py holds the measured table).

    >>> describe_exit(9)
    "exit code 9 (a rank was killed by SIGKILL: out of memory, or kill -9; MPICH's mpiexec gives the signal's number, or a rank exited with it)"
    """
    return describe(code)


def newest_checkpoint(directory: str) -> int | None:
    """The step of the newest complete checkpoint (a step-* directory with its manifest), or None.

    ``train`` checks its checksums too, and falls back to an older one if it is damaged.
    """
    if not os.path.isdir(directory):
        return None
    steps = [int(m.group(1)) for m in map(_STEP_DIR.match, os.listdir(directory))
             if m and os.path.isfile(os.path.join(directory, m.group(0), "MANIFEST.json"))]
    return max(steps, default=None)


def _train_options(command: list[str]):
    """--checkpoint-dir and --resume of a train command (None for another command)."""
    if not command or not (command[0] == "train" or command[0].startswith("-")):
        return None
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--checkpoint-dir")
    p.add_argument("--resume", default="auto")
    return p.parse_known_args(command[1:] if command[0] == "train" else command)[0]


def restart_point(command: list[str]) -> str | None:
    """Where a restart of ``command`` starts, as found now; None for a command other than train.

    >>> restart_point(["train", "--steps", "100"])
    'step 0 (train without --checkpoint-dir keeps no checkpoints)'
    """
    options = _train_options(command)
    if options is None:
        return None
    if not options.checkpoint_dir:
        return "step 0 (train without --checkpoint-dir keeps no checkpoints)"
    if options.resume == "none":
        return "step 0 (--resume none)"
    if options.resume != "auto":
        return f"the checkpoint {options.resume} (--resume)"
    step = newest_checkpoint(options.checkpoint_dir)
    if step is None:
        return f"step 0: no checkpoint in {options.checkpoint_dir} yet"
    return f"the checkpoint at step {step} in {options.checkpoint_dir}"


def verdict(attempt: int, code: int, restarts: int, max_restarts: int, interrupted: list) -> int | None:
    """launch's exit status if attempt ``attempt``'s exit ``code`` ends it (with a line saying why), else None:
    restart (``restarts``: this would be restart number ...)."""
    if code == 0:
        print(f"launch: attempt {attempt} finished", flush=True)
        return 0
    if interrupted or code in FINAL:
        print(f"launch: attempt {attempt} ended with {describe_exit(code)}; not restarting", flush=True)
        return code if code > 0 else 128 - code
    if restarts > max_restarts:
        print(f"launch: attempt {attempt} ended with {describe_exit(code)}; no restarts left "
              f"(--max-restarts {max_restarts})", flush=True)
        return code if code > 0 else 128 - code
    return None


def main(args) -> int:
    command = args.job[1:] if args.job[:1] == ["--"] else args.job
    if args.np < 1 or args.max_restarts < 0:
        raise UsageError(f"launch: -n {args.np} --max-restarts {args.max_restarts}: not allowed — -n >= 1 and "
                         "--max-restarts >= 0")
    if not args.elastic and (args.hosts or args.hostfile or args.host_check or args.min_ranks != 1):
        raise UsageError("launch: --hosts, --hostfile, --host-check and --min-ranks shape an elastic launch — add "
                         "--elastic, or leave them out")
    if args.elastic and not (args.regrow_every > 0 and 1 <= args.min_ranks <= args.np):
        raise UsageError(f"launch --elastic: --regrow-every {args.regrow_every:g} --min-ranks {args.min_ranks}: not "
                         f"allowed — --regrow-every > 0 and 1 <= --min-ranks <= -n {args.np}")
    if not command:
        raise UsageError("launch: nothing to run — say what after --, e.g. launch -n 4 -- train --checkpoint-dir ckpt")
    options = _train_options(command)
    if options is not None and not options.checkpoint_dir:
        print("launch: warning: train without --checkpoint-dir restarts from step 0", file=sys.stderr, flush=True)
    mpiexec = mpiexec_path(args.mpiexec)
    cmd = [mpiexec, "-n", str(args.np), *args.mpiexec_args.split(),
           sys.executable, "-m", "ringtrain", *command]
    interrupted = []
    state = {"job": None, "interrupted": interrupted}

    def forward(signum, frame):
        interrupted.append(signum)
        job = state["job"]
        if job is not None and job.poll() is None:
            job.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, forward)
    if args.elastic:
        from ..elastic import launch as elastic_launch
        return elastic_launch.run(args, command, mpiexec, state)
    attempt = 0
    while True:
        attempt += 1
        print(f"launch: attempt {attempt}: {' '.join(cmd)}", flush=True)
        job = state["job"] = subprocess.Popen(cmd)
        code = job.wait()
        status = verdict(attempt, code, attempt, args.max_restarts, interrupted)
        if status is not None:
            return status
        wait = min(30, 2 ** (attempt - 1))
        where = restart_point(command)
        print(f"launch: attempt {attempt} ended with {describe_exit(code)}; restarting in {wait} s (restart "
              f"{attempt} of {args.max_restarts})" + (f" from {where}" if where else ""), flush=True)
        time.sleep(wait)
