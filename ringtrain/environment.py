"""Every environment variable ringtrain reads: its rule, its default, what it does. One table, one place.

The command line checks them all before it does anything else
(``validate_environment`` in cli.main): a bad value ends the job with one line
and exit code 2, as a bad flag does, e.g. ``ringtrain: environment variable
OMP_NUM_THREADS='abc' is not allowed — a whole number from 1 to 1024, or
unset for ...``. The rules are the flags' (checks.py). Every rank of a job sees the same
environment, so every rank finds the same problem: the error is agreed, and
the job ends without an MPI abort. An empty value is refused like any other
bad one (unset the variable for its default).

The code that uses a variable reads it through ``value(name)``, which parses it
by the same rule. Module constants read at import time (collectives/thresholds.py),
before the command line could check anything, use ``value_or_default`` so
that importing ringtrain never raises; the check at start-up then reports
the bad value.

>>> value("RINGTRAIN_RING_MIN_BYTES", {"RINGTRAIN_RING_MIN_BYTES": "4096"})
4096
>>> value("RINGTRAIN_CHECK", {})
True
"""
import os
from dataclasses import dataclass

from .checks import Rule, flag, number, text, whole
from .constants import POLL_SLEEP_US


@dataclass(frozen=True)
class Variable:
    name: str
    rule: Rule
    default: object
    """The value when unset; None where the code that reads it works it out (``unset`` says how)."""
    unset: str
    """What happens when it is unset, as said to the user."""
    doc: str
    """What it does, and who reads it."""


_INT64 = whole(0, 2**63 - 1)  # compared with message sizes: anything an int64 holds is a size
_BYTES = Rule("a whole number of bytes from 0 to 2**63 - 1", _INT64.test, _INT64.parse)
_PATH = text("a non-empty path", r"\S.*")
_HOST = text("a host name or address", r"[^\s,]+")


def _explained(rule: Rule, what: str) -> Rule:
    """``rule``, saying what the value stands for after what it allows."""
    return Rule(f"{rule.allowed} ({what})", rule.test, rule.parse)


VARIABLES: dict[str, Variable] = {v.name: v for v in (
    Variable("OMP_NUM_THREADS", whole(1, 1024), None, "this node's cores split among its ranks (at least 1)",
             "Compute threads torch gets on each rank (train/threads.py). OpenMP reads it too; more than 1024 "
             "threads per rank would only fight over the cores."),
    Variable("RINGTRAIN_POLL_SLEEP_US", _explained(number(0, 1e6, below=True), "microseconds between polls; 0 spins"),
             POLL_SLEEP_US, f"{POLL_SLEEP_US:g} microseconds",
             "How long the reducer's communication thread, and each torch.distributed backend group's, sleeps "
             "between tests of its MPI requests; 0 spins (reducer/gradient_reducer.py, distributed/comm_thread.py; "
             "measured in benchmarks/README.md, \"Polite waiting\")."),
    # Measured with `ringtrain bench allreduce` (2 ranks, shared memory, MPICH 5.0.2
    # wheel): below this size native MPI_Allreduce is as fast or faster.
    Variable("RINGTRAIN_RING_MIN_BYTES", _BYTES, 16 << 20, "16 MiB",
             "Message size from which allreduce's auto picks the ring over native MPI "
             "(collectives/thresholds.py)."),
    Variable("RINGTRAIN_CHAIN_MIN_BYTES", _BYTES, 1 << 20, "1 MiB",
             "Message size from which broadcast's auto picks the pipelined chain over native MPI "
             "(collectives/thresholds.py)."),
    # Measured at 2 hosts x 2 ranks over 1 Gbit/s (benchmarks/README.md): the node-aware
    # ring was 0.78x MPI_Allreduce at 256 KiB and 1.25x at 1 MiB, 1.17-1.34x up to 64 MiB.
    Variable("RINGTRAIN_HIERARCHICAL_MIN_BYTES", _BYTES, 1 << 20, "1 MiB",
             "Message size from which auto picks the node-aware ring when the ranks span several nodes "
             "(collectives/thresholds.py)."),
    Variable("RINGTRAIN_CHECK", flag(), True, "1 (check)",
             "0 skips the handshake that checks every rank called a collective with the same count, "
             "dtype and options (collectives/api.py)."),
    Variable("RINGTRAIN_NODE_SIZE", _explained(whole(1), "ranks per node"), None,
             "nodes as MPI's shared-memory split finds them",
             "Forces nodes of this many consecutive ranks, so one machine can test every cluster shape "
             "(collectives/topology.py)."),
    Variable("RINGTRAIN_COST_MODEL", _explained(_PATH, "a cost-model JSON file, as plan --fit writes"), None,
             "the packaged cost model", "The cost model behind --compression auto and --bucket-cap-mb auto "
             "(train/autotune.py)."),
    Variable("RINGTRAIN_EXPECT_WORLD_SIZE", whole(1), None, "no check",
             "The number of tasks a job script started; a world of another size (N singletons from a launcher "
             "and an MPI that disagree on PMI) is refused (fault/world_size.py)."),
    Variable("RINGTRAIN_CACHE", _PATH, None, "~/.cache/ringtrain",
             "Where the tokenised corpus is cached (data/corpus.py)."),
    Variable("MPIEXEC", _PATH, None, "the mpiexec beside this Python, then the one on PATH",
             "The launcher `launch` runs (fault/supervise.py; --mpiexec overrides it)."),
    Variable("HOROVOD_STALL_CHECK_TIME_SECONDS", number(0, above=True), 60.0, "60 seconds",
             "How long ringtrain.horovod waits for a rank's operation before warning that it stalls, as Horovod's "
             "stall inspector (horovod/agreement.py)."),
    Variable("HOROVOD_STALL_CHECK_DISABLE", flag(), False, "0 (check)",
             "1 turns ringtrain.horovod's stall warning off (horovod/agreement.py)."),
    Variable("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", number(0), 0.0, "0 (never)",
             "After this long a stalled ringtrain.horovod operation ends the job, naming it; 0 never does "
             "(horovod/agreement.py)."),
    Variable("MASTER_ADDR", _HOST, None, "GLOO_SOCKET_IFNAME's address, or loopback on one host",
             "Where rank 0 of the torch DDP peer listens, for the benchmarks (bench/ddp_peer.py; torch's too)."),
    Variable("GLOO_SOCKET_IFNAME", text("comma-separated network interface names", r"[^\s,]+(,[^\s,]+)*"), None,
             "gloo's choice", "The interface the DDP peer's rank 0 listens on without MASTER_ADDR "
             "(bench/ddp_peer.py; gloo's too)."),
)}


def problem(name: str, environ=os.environ) -> str | None:
    """What is wrong with ``name``'s value in ``environ``, or None if it is unset or allowed."""
    variable, raw = VARIABLES[name], environ.get(name)
    if raw is None:
        return None
    try:
        variable.rule.value_of(raw)
        return None
    except ValueError:
        # "is not allowed", as topology's and the reducer's tests have always matched it
        return (f"environment variable {name}={raw!r} is not allowed — {variable.rule.allowed}, "
                f"or unset for {variable.unset}")


def value(name: str, environ=os.environ):
    """``name``'s value parsed by its rule, or its default when unset; raises UsageError (a ValueError) if bad.

    >>> value("OMP_NUM_THREADS", {"OMP_NUM_THREADS": "4"}), value("OMP_NUM_THREADS", {})
    (4, None)
    """
    from .fault.errors import UsageError  # here, not above: ringtrain.fault imports this module
    said = problem(name, environ)
    if said is not None:
        raise UsageError(said)
    raw = environ.get(name)
    return VARIABLES[name].default if raw is None else VARIABLES[name].rule.value_of(raw)


def value_or_default(name: str, environ=os.environ):
    """``name``'s value, or its default when unset or not allowed: for reads at import time, which must not
    raise. ``validate_environment`` reports the bad value at start-up.

    >>> value_or_default("RINGTRAIN_RING_MIN_BYTES", {"RINGTRAIN_RING_MIN_BYTES": "lots"})
    16777216
    """
    return VARIABLES[name].default if problem(name, environ) else value(name, environ)


def validate_environment(environ=os.environ) -> None:
    """Raise one agreed UsageError naming every variable set to a value its rule refuses. Not collective.

    Every rank of a job sees the same environment, so every rank raises the
    same error (``agreed``): rank 0 prints it and every rank exits with code 2.

    >>> validate_environment({"OMP_NUM_THREADS": "2"})
    """
    from .fault.errors import UsageError
    problems = [p for p in (problem(name, environ) for name in VARIABLES) if p]
    if problems:
        raise UsageError("; ".join(problems), agreed=True)


def markdown() -> str:
    """The table for the README: variable, what it allows, the default, what it does."""
    rows = [f"| `{v.name}` | {v.rule.allowed} | {v.unset} | {v.doc} |" for v in VARIABLES.values()]
    return "\n".join(["| variable | allowed | unset | what it does |", "|---|---|---|---|", *rows])
