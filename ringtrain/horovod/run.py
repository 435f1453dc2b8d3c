"""horovodrun's command line on mpiexec: ``python -m ringtrain.horovod.run -np 4 -H host1:2,host2:2 python train.py``.

The flags a horovodrun user types become the flags of the mpiexec beside this
Python (or $MPIEXEC, or --mpiexec), in its dialect: MPICH's hydra or Open
MPI's (mpiexec_command.py has the table). ``--print-command`` prints the
command instead of running it. ringtrain.horovod talks over MPI only, so the
options of Gloo, elastic training, the timeline, autotuning and Horovod's
tuning knobs are refused, each with one line saying why, and exit code 2;
so is a flag that argparse does not know. Accepted without effect:
``--disable-cache`` and ``--start-timeout`` (they govern horovodrun's own
ssh and network checks before launch, which this launcher does not make; mpiexec
reports an unreachable host itself), ``--mpi`` (always MPI) and ``--stall-check``
(always on). ``--stall-check-warning-time-seconds`` reaches the ranks as
HOROVOD_STALL_CHECK_TIME_SECONDS, which ringtrain.horovod's engine reads.

    python -m ringtrain.horovod.run -np 2 -H localhost:2 --print-command python train.py
"""
import argparse
import os
import sys

from .._version import __version__
from ..fault.errors import UsageError
from ..fault.supervise import mpiexec_path
from .mpiexec_command import FLAVOURS, Launch, LaunchError, detect_flavour, mpiexec_command, parse_hosts, \
    read_hostfile

PROG = "python -m ringtrain.horovod.run"
HOROVOD_API = "0.28.1"

_ELASTIC = "elastic training (hvd.elastic) is not provided; ringtrain stops every rank with one line on a failure " \
           "and resumes from a checkpoint instead"
_NO_LOG = "ringtrain.horovod has no backend log to configure; ringtrain's errors name the rank and the call"
# (flags, number of values, why). Each is refused with one line; the values are read so that parsing goes on and
# every refused flag of a command line is named at once.
REFUSED = [
    (["--gloo"], 0, "ringtrain.horovod talks over MPI only (Gloo is not built)"),
    (["--jsrun"], 0, "launch with jsrun itself: ringtrain.horovod starts under any MPI launcher"),
    (["--gloo-timeout-seconds"], 1, "there is no Gloo here"),
    (["--min-np", "--min-num-proc"], 1, _ELASTIC),
    (["--max-np", "--max-num-proc"], 1, _ELASTIC),
    (["--slots-per-host"], 1, _ELASTIC),
    (["--elastic-timeout"], 1, _ELASTIC),
    (["--reset-limit"], 1, _ELASTIC),
    (["--blacklist-cooldown-range"], 2, _ELASTIC),
    (["--host-discovery-script"], 1, _ELASTIC),
    (["--timeline-filename"], 1, "there is no Horovod timeline; ringtrain's trace (ringtrain.trace.Tracer, "
                                 "Chrome's trace format) records the steps and collectives"),
    (["--timeline-mark-cycles", "--no-timeline-mark-cycles"], 0, "there is no Horovod timeline"),
    (["--autotune", "--no-autotune"], 0, "no autotuning: ringtrain picks each collective's algorithm by size "
                                         "(RINGTRAIN_RING_MIN_BYTES and the other thresholds tune it)"),
    (["--autotune-log-file"], 1, "no autotuning"),
    (["--autotune-warmup-samples"], 1, "no autotuning"),
    (["--autotune-steps-per-sample"], 1, "no autotuning"),
    (["--autotune-bayes-opt-max-samples"], 1, "no autotuning"),
    (["--autotune-gaussian-process-noise"], 1, "no autotuning"),
    (["--fusion-threshold-mb"], 1, "there is no fusion buffer to size: DistributedOptimizer averages gradients in "
                                   "ringtrain's reducer buckets"),
    (["--cycle-time-ms"], 1, "there is no coordination cycle: each operation starts when it is submitted"),
    (["--cache-capacity"], 1, "there is no response cache: every call's name, shape and dtype are checked"),
    (["--hierarchical-allreduce", "--no-hierarchical-allreduce"], 0,
     "ringtrain takes its node-aware ring by itself where ranks span nodes (RINGTRAIN_HIERARCHICAL_MIN_BYTES "
     "sets from which size)"),
    (["--hierarchical-allgather", "--no-hierarchical-allgather"], 0,
     "ringtrain takes its node-aware ring by itself where ranks span nodes"),
    (["--no-stall-check"], 0, "the stall warning cannot be turned off (calls that differ across ranks raise at "
                              "once; a rank that never calls is warned of); set "
                              "--stall-check-warning-time-seconds high instead"),
    (["--stall-check-shutdown-time-seconds"], 1, "a stall is reported, not ended on a timer; a rank that fails "
                                                 "makes every rank raise"),
    (["--mpi-threads-disable", "--no-mpi-threads-disable"], 0,
     "ringtrain.horovod's background thread needs MPI_THREAD_MULTIPLE"),
    (["--num-nccl-streams"], 1, "there is no NCCL here"),
    (["--thread-affinity"], 1, "the background thread's affinity is not set here; bind ranks with --binding-args"),
    (["--log-level"], 1, _NO_LOG),
    (["--log-with-timestamp", "--log-without-timestamp", "--log-hide-timestamp", "--no-log-hide-timestamp"], 0,
     _NO_LOG),
    (["--config-file"], 1, "YAML configuration files are not read; pass the flags on the command line"),
    (["--tcp"], 0, "choose MPI's transport with its own options, through --mpi-args"),
]


class _Refuse(argparse.Action):
    """Notes a refused flag (with its reason) on the namespace instead of failing at the first one."""

    def __init__(self, option_strings, dest, reason, nargs=0, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=nargs, default=argparse.SUPPRESS,
                         help=f"not supported: {reason}", metavar="X" if nargs else None)
        self.reason = reason

    def __call__(self, parser, namespace, values, option_string=None):
        refused = getattr(namespace, "refused", [])
        refused.append(f"{option_string}: not supported: {self.reason}")
        namespace.refused = refused


def parser() -> argparse.ArgumentParser:
    """horovodrun's flags, grouped as its help groups them, plus --print-command, --mpiexec and --mpi-flavour."""
    p = argparse.ArgumentParser(prog=PROG, description="Launch a Horovod script on ringtrain.horovod with mpiexec, "
                                "taking horovodrun's flags.")
    p.add_argument("-v", "--version", action="version",
                   version=f"ringtrain {__version__} (ringtrain.horovod: horovod.torch {HOROVOD_API} API)")
    p.add_argument("-np", "--num-proc", dest="num_proc", type=int, help="number of processes (required)")
    p.add_argument("-cb", "--check-build", action="store_true", help="show what ringtrain.horovod has, and exit")
    p.add_argument("--disable-cache", action="store_true", help="accepted; there are no cached start-up checks")
    p.add_argument("--start-timeout", type=int, help="accepted; there are no start-up checks to time "
                   "(mpiexec reports an unreachable host itself)")
    p.add_argument("--network-interfaces", dest="nics", action="append", default=[],
                   help="interfaces MPI may use, comma-separated")
    p.add_argument("--network-interface", dest="nics", action="append", help="an interface MPI may use (repeatable)")
    p.add_argument("--output-filename", help="a directory for every rank's stdout and stderr")
    p.add_argument("--verbose", action="store_true", help="print the mpiexec command before running it")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the program to run on every rank, and its arguments")
    ssh = p.add_argument_group("SSH arguments")
    ssh.add_argument("-p", "--ssh-port", type=int, help="ssh port on every host")
    ssh.add_argument("-i", "--ssh-identity-file", help="the ssh private key")
    hosts = p.add_argument_group("host arguments").add_mutually_exclusive_group()
    hosts.add_argument("-H", "--hosts", help="host:slots,host:slots (default: every rank on this machine)")
    hosts.add_argument("-hostfile", "--hostfile", help="a file of '<host> slots=<N>' lines")
    mpi = p.add_argument_group("MPI arguments")
    mpi.add_argument("--mpi", action="store_true", help="accepted; ringtrain.horovod always runs on MPI")
    stall = p.add_argument_group("stall check arguments")
    stall.add_argument("--stall-check", action="store_true", help="accepted; the stall warning is always on")
    stall.add_argument("--stall-check-warning-time-seconds", type=int, metavar="S",
                       help="seconds a rank waits for the others' matching call before it warns "
                            "(HOROVOD_STALL_CHECK_TIME_SECONDS for the ranks; default 60)")
    mpi.add_argument("--mpi-args", help='passed to mpiexec as they are, e.g. --mpi-args="-ppn 2"')
    mpi.add_argument("--binding-args", help="process binding flags, replacing the default")
    mpi.add_argument("-prefix-timestamp", "--prefix-output-with-timestamp", action="store_true",
                     help="stamp each output line with the time (Open MPI only)")
    ours = p.add_argument_group("ringtrain's own")
    ours.add_argument("--print-command", action="store_true", help="print the mpiexec command and exit")
    ours.add_argument("--mpiexec", help="the mpiexec to run (default: $MPIEXEC, else beside this Python, else PATH's)")
    ours.add_argument("--mpi-flavour", choices=FLAVOURS, help="the mpiexec's dialect (default: asked with --version)")
    refused = p.add_argument_group("not supported (each is refused with exit code 2)")
    for flags, nargs, reason in REFUSED:
        refused.add_argument(*flags, action=_Refuse, reason=reason, nargs=nargs)
    return p


def check_build() -> str:
    """What ringtrain.horovod has, in the shape of horovodrun --check-build."""
    def box(x):
        return "[X]" if x else "[ ]"
    rows = [f"ringtrain.horovod (ringtrain {__version__}), the horovod.torch {HOROVOD_API} API:", "",
            "Available Frameworks:", f"    {box(True)} PyTorch", f"    {box(False)} TensorFlow",
            f"    {box(False)} MXNet", "", "Available Controllers:", f"    {box(True)} MPI", f"    {box(False)} Gloo",
            "", "Available Tensor Operations:", f"    {box(True)} MPI (ringtrain's collectives over mpi4py)",
            f"    {box(False)} NCCL", f"    {box(False)} DDL", f"    {box(False)} CCL", f"    {box(False)} Gloo"]
    return "\n".join(rows)


def launch_from(args) -> Launch:
    """The Launch that parsed arguments ask for; LaunchError naming the flag otherwise."""
    if args.num_proc is None:
        raise LaunchError("-np/--num-proc is required (the number of processes)")
    if args.num_proc < 1:
        raise LaunchError(f"-np {args.num_proc}: the number of processes must be at least 1")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise LaunchError("no command to run: put it after the flags, e.g. ... -np 2 python train.py")
    hosts = parse_hosts(args.hosts) if args.hosts else read_hostfile(args.hostfile) if args.hostfile else None
    nics = [n.strip() for item in args.nics for n in item.split(",") if n.strip()]
    rank_env = {}
    if args.stall_check_warning_time_seconds is not None:
        if args.stall_check_warning_time_seconds < 1:
            raise LaunchError(f"--stall-check-warning-time-seconds {args.stall_check_warning_time_seconds}: "
                              "must be at least 1")
        rank_env["HOROVOD_STALL_CHECK_TIME_SECONDS"] = str(args.stall_check_warning_time_seconds)
    return Launch(np=args.num_proc, command=command, hosts=hosts, hostfile=args.hostfile, ssh_port=args.ssh_port,
                  ssh_identity_file=args.ssh_identity_file, nics=list(dict.fromkeys(nics)),
                  output_filename=args.output_filename, timestamp_output=args.prefix_output_with_timestamp,
                  binding_args=args.binding_args, mpi_args=args.mpi_args, rank_env=rank_env)


def main(argv: list[str] | None = None) -> int:
    """Parse horovodrun's flags, then print the command or replace this process with mpiexec. Exit 2 on misuse."""
    args = parser().parse_args(argv)
    if getattr(args, "refused", None):
        for line in args.refused:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        return 2
    if args.check_build:
        print(check_build())
        return 0
    try:
        launch = launch_from(args)
        mpiexec = mpiexec_path(args.mpiexec)
        flavour = args.mpi_flavour or detect_flavour(mpiexec)
        command = mpiexec_command(launch, flavour, mpiexec, dict(os.environ))
    except (LaunchError, UsageError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if args.print_command:
        print(command)
        return 0
    if args.verbose:
        print(command, file=sys.stderr, flush=True)
    if launch.output_filename:
        os.makedirs(launch.output_filename, exist_ok=True)  # hydra writes into it but does not make it
    sys.stdout.flush()
    os.execve(command.argv[0], command.argv, {**os.environ, **command.env})


if __name__ == "__main__":
    sys.exit(main())
