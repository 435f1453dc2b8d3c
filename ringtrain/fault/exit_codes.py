"""Exit codes of ``python -m ringtrain``, for job scripts.

- 0: finished.
- 1: an unexpected error (a bug, or a failure such as a full disk) on some
  rank; the traceback is printed and the job was aborted.
- 2: bad input: a flag, a path, a model factory, a checkpoint that cannot be
  used, a checkpoint directory locked by another run. One line says what is
  wrong and what is allowed; nothing was trained or written.
- 3: the loss became NaN or inf; the run stopped without checkpointing the
  diverged state, so the last checkpoint is still good.
- 75 (EX_TEMPFAIL): stopped by SIGTERM, SIGUSR1 or SIGINT after writing a
  checkpoint; resuming from it continues the run. Slurm templates requeue on it.
- 76: a collective missed its deadline (a rank died or stalled); the job was
  aborted. Restarting from the last checkpoint is the remedy.
- 130 (128 + SIGINT): a second SIGINT outside a checkpoint stopped at once,
  without a checkpoint.
- 255 is not ringtrain's: MPICH's mpiexec returns it when it kills the job
  (a rank died, or Ctrl-C twice at mpiexec, its force-abort).
"""
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75
EXIT_TIMEOUT = 76
EXIT_INTERRUPTED = 130
