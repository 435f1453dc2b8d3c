"""``python -m ringtrain``: runs the command line so that a failing rank aborts the whole job."""
import sys

from .fault.abort import run_or_abort


def main(argv=None) -> int:
    from .cli import main as cli_main
    return run_or_abort(cli_main, argv)


if __name__ == "__main__":
    try:
        status = main()
    except SystemExit as e:
        status = e.code
    from .elastic import finalize  # after a shrink, without MPI_Finalize, which may wait on the dead
    finalize.exit(status)
