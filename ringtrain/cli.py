"""The ``python -m ringtrain`` command line: one subcommand per job."""
import argparse
import sys

from ._version import __version__
from .environment import validate_environment
from .fault.errors import UsageError
from .fault import check_world_size


class Parser(argparse.ArgumentParser):
    """argparse, but under mpiexec only rank 0 prints a usage error (every rank exits with code 2)."""

    def error(self, message):
        from .fault.abort import launcher_rank
        if launcher_rank() == 0:
            self.print_usage(sys.stderr)
            sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from .bench import allreduce as bench_allreduce
    parser = Parser(
        prog="python -m ringtrain",
        description="Data-parallel training over MPI. Run under mpiexec, e.g. mpiexec -n 4 python -m ringtrain "
                    "(with no command, or only train's options, it trains the demo GPT)")
    parser.add_argument("--version", action="version", version=f"ringtrain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from .train import config as train_config
    train_config.add_arguments(sub.add_parser(
        "train", help="train a model (default: a small GPT on this Python's standard library)"))
    from .fault import supervise
    supervise.add_arguments(sub.add_parser(
        "launch", help="run mpiexec and restart it from the latest checkpoint when it fails"))
    sub.add_parser("info", help="MPI library, ranks and hosts, thread level, versions")
    from .train import consolidate
    consolidate.add_arguments(sub.add_parser(
        "consolidate", help="join a sharded (--zero) checkpoint into one ordinary checkpoint"))
    from .plan import planner
    planner.add_arguments(sub.add_parser(
        "plan", help="predicted step time and scaling per node count, with the best algorithm, bucket size "
                     "and compressor, from the fitted cost model"))
    trace = sub.add_parser("trace", help="read a timeline written by train --trace")
    trace_sub = trace.add_subparsers(dest="trace_command", metavar="ACTION", required=True)
    from .trace import summary as trace_summary
    trace_summary.add_arguments(trace_sub.add_parser(
        "summary", help="per step: compute, communication, the exposed part, overlap and the slowest rank"))
    bench = sub.add_parser("bench", help="benchmarks against the native MPI peer")
    bench_sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    bench_allreduce.add_arguments(bench_sub.add_parser(
        "allreduce", help="ringtrain's allreduce algorithms against MPI_Allreduce, nccl-tests style"))
    from .bench import training as bench_training
    bench_training.add_arguments(bench_sub.add_parser(
        "training", help="step time of the gradient reducer per bucket size, against torch DDP on gloo"))
    from .bench import horovod as bench_horovod
    bench_horovod.add_arguments(bench_sub.add_parser(
        "horovod", help="step time of ringtrain.horovod's DistributedOptimizer against the gradient reducer, "
                        "same model, alternating runs"))
    from .bench import compression as bench_compression
    bench_compression.add_arguments(bench_sub.add_parser(
        "compression", help="every compressor: wire ratio, speed, error with and without error feedback, allreduce time"))
    from .bench import convergence as bench_convergence
    bench_convergence.add_arguments(bench_sub.add_parser(
        "convergence", help="steps/s and loss of real training per bucket size and compressor, against DDP "
                            "with and without PowerSGD"))
    from .bench import memory as bench_memory
    bench_memory.add_arguments(bench_sub.add_parser(
        "memory", help="per-rank memory of ZeRO stages 1 and 2 against unsharded training and torch's "
                       "ZeroRedundancyOptimizer, per model size"))
    from .bench import backend as bench_backend
    bench_backend.add_arguments(bench_sub.add_parser(
        "backend", help="torch.distributed on the ringtrain backend against gloo and MPI's own collective, "
                        "every op, nccl-tests style, and the 1-element all_reduce's latency"))
    from .bench import fsdp as bench_fsdp
    bench_fsdp.add_arguments(bench_sub.add_parser(
        "fsdp", help="FSDP2 step time on the ringtrain backend against FSDP2 on gloo, in one job"))
    from .bench import pipeline as bench_pipeline
    bench_pipeline.add_arguments(bench_sub.add_parser(
        "pipeline", help="pipelining step time on the ringtrain backend against gloo, the GPT cut as train cuts it"))
    from .bench import merge as bench_merge
    bench_merge.add_arguments(bench_sub.add_parser(
        "merge", help="merge bench allreduce JSON files (e.g. from a Slurm array) into one table, JSON and plot"))
    return parser


def main(argv=None) -> int:
    # First of all, before the parser imports torch (whose OpenMP reads OMP_NUM_THREADS) and before any
    # collective: a bad environment variable is one line and exit code 2, on every rank alike.
    validate_environment()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "train")  # `python -m ringtrain --steps 100` trains, as the bare command does
    args = build_parser().parse_args(argv)
    if args.command not in ("launch", "plan", "trace", "consolidate"):
        check_world_size()  # before any collective: a world of singletons must not train
    if args.command is None:  # the default job
        args = build_parser().parse_args(["train"])
    if args.command == "train":
        return _train(args)
    if args.command == "launch":
        from .fault import supervise
        return supervise.main(args)
    if args.command == "plan":
        from .plan import planner
        return planner.main(args)
    if args.command == "trace":
        from .trace import summary as trace_summary
        try:
            return trace_summary.main(args)
        except trace_summary.NotATrace as e:
            raise UsageError(f"trace summary: {e}") from None
    if args.command == "consolidate":
        from .train import consolidate
        return consolidate.main(args)
    if args.command == "info":
        from . import info
        return info.main(args)
    import importlib
    return importlib.import_module(f".bench.{args.benchmark}", __package__).main(args)


def _train(args) -> int:
    from .train import config as train_config
    from .train import train
    try:
        cfg = train_config.from_args(args)
    except UsageError as e:
        e.agreed = True  # every rank parsed the same flags, so every rank raises it
        raise
    train(cfg)
    return 0
