"""``python -m ringtrain``: runs the command line so that a failing rank aborts the whole job."""
import sys

from .fault.abort import run_or_abort


def main(argv=None) -> int:
    from .cli import main as cli_main
    return run_or_abort(cli_main, argv)


if __name__ == "__main__":
    sys.exit(main())
