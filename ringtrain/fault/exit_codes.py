"""Exit codes of ``python -m ringtrain train``, for job scripts.

- 0: finished.
- 1: an error (bad input, an exception on some rank; the job was aborted).
- 75 (EX_TEMPFAIL): stopped by SIGTERM, SIGUSR1 or SIGINT after writing a
  checkpoint; resuming from it continues the run. Slurm templates requeue on it.
- 76: a collective missed its deadline (a rank died or stalled); the job was
  aborted. Restarting from the last checkpoint is the remedy.
"""
EXIT_ERROR = 1
EXIT_PREEMPTED = 75
EXIT_TIMEOUT = 76
