"""The ``python -m ringtrain`` command line: one subcommand per job."""
import argparse

from ._version import __version__


def build_parser() -> argparse.ArgumentParser:
    from .bench import allreduce as bench_allreduce
    parser = argparse.ArgumentParser(
        prog="python -m ringtrain",
        description="Data-parallel training over MPI. Run under mpiexec, e.g. mpiexec -n 4 python -m ringtrain")
    parser.add_argument("--version", action="version", version=f"ringtrain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("info", help="MPI library, ranks and hosts, thread level, versions")
    bench = sub.add_parser("bench", help="benchmarks against the native MPI peer")
    bench_sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    bench_allreduce.add_arguments(bench_sub.add_parser(
        "allreduce", help="ringtrain's allreduce algorithms against MPI_Allreduce, nccl-tests style"))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        from . import info
        return info.main(args)
    if args.command is None:
        # The default job. Until the trainer exists it is the allreduce benchmark.
        args = build_parser().parse_args(["bench", "allreduce"])
    from .bench import allreduce as bench_allreduce
    return bench_allreduce.main(args)
