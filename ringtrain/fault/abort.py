"""Run a rank's main function so that an error ends the whole job, never leaving a rank waiting.

- A ``OneLineError`` (bad input, a diverged loss) that every rank raised
  together prints one line on rank 0, ``ringtrain: <message>``, and every rank
  exits with the error's code (2 for bad input). No traceback, no MPI abort.
  Raised on one rank alone, it prints the same line (with the rank) and aborts
  the job with that code, so the peers do not wait forever.
- An allocation failure that the memory preflight did not foresee (train/memory_check.py) prints one
  line naming the rank and what to lower, and aborts with 2.
- A second SIGINT (``KeyboardInterrupt``) prints one line and aborts with 130.
- Anything else is a bug: like ``python -m mpi4py``, print the traceback with
  the rank, then call MPI_Abort, which makes the launcher kill every rank and
  return non-zero.
"""
import os
import sys
import time
import traceback

from .errors import OneLineError
from .exit_codes import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE


def launcher_rank() -> int:
    """This process's rank as the launcher set it (0 if none): known before MPI starts."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _mpi():
    """mpi4py's MPI module if MPI is running in this process, else None (never starts MPI)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        return mpi
    return None


def _abort(code: int) -> None:
    mpi = _mpi()
    if mpi is not None and mpi.COMM_WORLD.Get_size() > 1:
        # The launcher forwards our stderr asynchronously, and Abort makes
        # it kill every process, its forwarders included: give the message
        # a moment to get out, or the job may end with nothing said.
        time.sleep(0.5)
        mpi.COMM_WORLD.Abort(code)


def run_or_abort(main, *args) -> int:
    """Return ``main(*args)``; end the job as described above on an error."""
    try:
        return main(*args)
    except SystemExit:
        raise
    except OneLineError as e:
        mpi = _mpi()
        rank = mpi.COMM_WORLD.Get_rank() if mpi is not None else launcher_rank()
        alone = mpi is None or mpi.COMM_WORLD.Get_size() == 1
        if e.agreed or alone:
            if rank == 0:
                sys.stderr.write(f"ringtrain: {e}\n")
            sys.stderr.flush()
            raise SystemExit(e.exit_code) from None
        sys.stderr.write(f"ringtrain: rank {rank}: {e}\n")
        sys.stderr.flush()
        _abort(e.exit_code)
        raise SystemExit(e.exit_code) from None
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            _traceback_and_abort()
            raise
        rank = launcher_rank()
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        sys.stderr.write(f"ringtrain: rank {rank}: out of memory ({first}) — lower --batch-size, --eval-windows "
                         f"or the model's size, or run fewer ranks per node (exit code {EXIT_USAGE})\n")
        sys.stderr.flush()
        _abort(EXIT_USAGE)
        raise SystemExit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        sys.stderr.write(f"ringtrain: rank {launcher_rank()}: interrupted by a second SIGINT; stopping now "
                         f"(exit code {EXIT_INTERRUPTED}); the checkpoints written so far stay valid\n")
        sys.stderr.flush()
        _abort(EXIT_INTERRUPTED)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except BaseException:
        _traceback_and_abort()
        raise


def abort_on_uncaught_exception() -> None:
    """From now on, an exception no one catches ends the whole job, as under ``python -m mpi4py``.

    For scripts run as ``mpiexec python script.py`` (or srun): by default the
    failing rank would print its traceback and then wait in MPI_Finalize while
    its peers wait for it in their next collective, until the job's time limit.
    The hook prints the traceback as before, with the rank, then calls
    MPI_Abort (exit code 1; 130 for Ctrl-C). Installed once per process.
    """
    previous = sys.excepthook
    if getattr(previous, "ringtrain_aborts", False):
        return

    def hook(kind, value, tb):
        mpi = _mpi()
        if mpi is None or mpi.COMM_WORLD.Get_size() == 1:
            previous(kind, value, tb)
            return
        # Straight to the process's stderr: torch's own hook, which wraps this one after init_process_group,
        # collects what its inner hook prints and writes it only once that returns, which an abort never does.
        _traceback_and_abort((kind, value, tb), sys.__stderr__,
                             EXIT_INTERRUPTED if issubclass(kind, KeyboardInterrupt) else EXIT_ERROR)

    hook.ringtrain_aborts = True
    sys.excepthook = hook


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure: numpy's MemoryError, or torch's allocator refusing.

    >>> out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    True
    """
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return "can't allocate memory" in text or "not enough memory" in text or "out of memory" in text.lower()


def _traceback_and_abort(exc_info=None, err=None, code: int = EXIT_ERROR) -> None:
    """Print the exception being handled (or ``exc_info``) with the rank to ``err`` (stderr), then abort."""
    mpi = _mpi()
    rank = mpi.COMM_WORLD.Get_rank() if mpi is not None else "?"
    err = sys.stderr if err is None else err
    err.write(f"ringtrain: uncaught exception on rank {rank}, aborting the job:\n")
    traceback.print_exception(*(exc_info or sys.exc_info()), file=err)
    err.flush()
    _abort(code)
