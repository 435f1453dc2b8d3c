"""The engine's agreement: before each operation one small allreduce says whether every rank queued the same one.

Horovod's coordinator waits until every rank has asked for a tensor name; a
name that some rank never asks for (names or order that differ) waits
forever. Here each rank's engine instead takes the operations in submission
order, and before running one every rank contributes a fixed-width vector to
one MAX allreduce on the lane's control communicator: for each of its next
operations (up to WINDOW, those that tensor fusion could run as one)

    [sig, -sig]

and then ``[active, -active, joining, -first_active, -count]``. ``sig`` is a
62-bit hash of (kind, name, description), chained so that the j-th names
the first j operations; ``max(sig) == -max(-sig)`` only if every active rank
has the same one (comm.handshake's trick, on a wider code). The ranks run the
longest agreeing prefix that every rank offers (``count``). A rank inside
``join`` has no operation: it puts the int64 minimum in the sig slots, so it
never moves a maximum, and ``active = 0``; ``joining`` is its rank in the
first round after it joined (the round in which all ranks have joined names
the last one) and -1 otherwise; ``first_active`` is the lowest active rank,
which tells joined ranks what to run. Only when the first operations differ
are their full descriptions gathered, to say what differs.

Waits poll (MPI_Test, then sleep) rather than spin inside MPI, so that the
engine's thread leaves the core to backward while it waits for a slower rank,
except while the caller is itself blocked in ``synchronize``.
"""
import hashlib
import sys
import time
from typing import NamedTuple

import numpy as np
from mpi4py import MPI

from ..environment import value_or_default

_INT64_MIN = np.iinfo(np.int64).min
# Horovod's stall inspector, with its variables: a warning after HOROVOD_STALL_CHECK_TIME_SECONDS (60 s) unless
# HOROVOD_STALL_CHECK_DISABLE=1, and the job's end after HOROVOD_STALL_SHUTDOWN_TIME_SECONDS (0: never).
# Read and checked as every variable in environment.py's table (a bad value is a ValueError naming it).
STALL_WARNING_SECONDS = float(value_or_default("HOROVOD_STALL_CHECK_TIME_SECONDS"))
if value_or_default("HOROVOD_STALL_CHECK_DISABLE"):
    STALL_WARNING_SECONDS = float("inf")
STALL_SHUTDOWN_SECONDS = float(value_or_default("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS")) or None


def signature(kind: str, name, describe: dict) -> int:
    """A 62-bit hash of an operation, the same on every rank (Python's hash() is salted per process).

    >>> signature("allreduce", "a", {"shape": (2,)}) == signature("allreduce", "a", {"shape": (2,)})
    True
    """
    text = repr((kind, name, _canonical(describe))).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 2


def _canonical(value):
    """``value`` with every dict and set in sorted order: their iteration order may differ from rank to rank."""
    if isinstance(value, dict):
        return sorted((repr(k), _canonical(v)) for k, v in value.items())
    if isinstance(value, (set, frozenset)):
        return sorted(repr(_canonical(v)) for v in value)
    if isinstance(value, (list, tuple)):
        return type(value)(_canonical(v) for v in value)
    return value


WINDOW = 16
"""How many queued operations one round can agree on: the most that tensor fusion runs as one (fusion.py)."""


class Verdict(NamedTuple):
    """What one agreement round decided, the same on every rank."""

    count: int
    """How many of the active ranks' first operations agree (0: the first ones differ)."""
    any_active: bool
    """Some rank has an operation; False only once every rank has joined."""
    all_active: bool
    """No rank is inside join."""
    joining: int
    """The highest rank that joined in this round, or -1."""
    first_active: int
    """The lowest active rank (the job's size if none)."""

    @property
    def agreed(self) -> bool:
        """Every active rank's first operation is the same (or no rank is active)."""
        return self.count > 0 or not self.any_active


def agree(control: MPI.Comm, sigs: list | None, joining_now: bool, urgent=None, what: str = "") -> Verdict:
    """One agreement round on ``control``: how many of the ranks' next operations are the same.

    ``sigs``: the cumulative signatures (``chain``) of this rank's next
    operations, at most WINDOW; None means this rank is inside join. One MAX
    allreduce of 2 * WINDOW + 5 int64: per window slot (H, -H), then the
    active flag twice, the joining rank, the first active rank, and the
    smallest count of operations offered.

    >>> agree(MPI.COMM_SELF, [5], False).count
    1
    """
    rank, size = control.Get_rank(), control.Get_size()
    v = np.full(2 * WINDOW + 5, _INT64_MIN, dtype=np.int64)
    if sigs is None:
        v[2 * WINDOW:] = (0, 0, rank if joining_now else -1, -size, -WINDOW)
    else:
        for j, h in enumerate(sigs):
            v[2 * j], v[2 * j + 1] = h, -h
        v[2 * WINDOW:] = (1, -1, -1, -rank, -len(sigs))
    if size > 1:
        wait(control.Iallreduce(MPI.IN_PLACE, v, MPI.MAX), urgent, what, STALL_SHUTDOWN_SECONDS)
    got = v.tolist()  # Python ints: negating the int64 minimum must not wrap
    any_active, neg_all_active, joining, neg_first, neg_count = got[2 * WINDOW:]
    count = 0
    if any_active:
        while count < -neg_count and got[2 * count] == -got[2 * count + 1]:
            count += 1
    return Verdict(count=count, any_active=bool(any_active), all_active=neg_all_active == -1, joining=joining,
                   first_active=-neg_first)


def chain(sigs: list) -> list:
    """Cumulative signatures: the j-th names the first j operations, so one agreeing slot vouches for all before it.

    >>> a, b = chain([1, 2]), chain([1, 3]); a[0] == b[0], a[1] == b[1]
    (True, False)
    """
    out, h = [], 0
    for i, s in enumerate(sigs):
        h = s if i == 0 else int.from_bytes(hashlib.blake2b(f"{h},{s}".encode(), digest_size=8).digest(),
                                            "little") >> 2
        out.append(h)
    return out


def any_rank(control: MPI.Comm, flag: bool, urgent=None, what: str = "", deadline: float | None = None) -> bool:
    """Whether ``flag`` is true on some rank (one MAX allreduce of one int64)."""
    v = np.array([1 if flag else 0], dtype=np.int64)
    if control.Get_size() > 1:
        wait(control.Iallreduce(MPI.IN_PLACE, v, MPI.MAX), urgent, what, deadline)
    return bool(v[0])


def wait(request: MPI.Request, urgent=None, what: str = "", deadline: float | None = None) -> None:
    """Complete ``request``: spin while ``urgent()`` (someone waits on the result), else test and sleep.

    After STALL_WARNING_SECONDS one line on stderr names what this rank waits
    for. ``deadline`` (seconds): past it the job is aborted with that line,
    for waits that can only end if a peer that is stuck elsewhere comes back.
    """
    start = time.perf_counter()
    spin_until = start + 2e-4  # a short operation is seen done at once; only a long wait sleeps
    check_at, warned = start + 0.1, False
    while not request.Test():
        now = time.perf_counter()
        if now >= check_at:  # a tenth of a second between looks at the clock's limits, spinning or not
            check_at = now + 0.1
            if not warned and now - start > STALL_WARNING_SECONDS:
                warned = True
                _say(f"rank {MPI.COMM_WORLD.Get_rank()} has waited {now - start:.0f} s for the other ranks to reach "
                     f"{what}; a rank that never submits it stalls the job")
            if deadline is not None and now - start > deadline:
                _say(f"rank {MPI.COMM_WORLD.Get_rank()}: the other ranks did not reach {what} within "
                     f"{deadline:.0f} s; aborting the job so that none waits forever")
                MPI.COMM_WORLD.Abort(1)
        if now < spin_until or (urgent is not None and urgent()):
            continue
        # Back off: a wait that has lasted t may be noticed t/20 late, at most 2 ms (nobody waits on it).
        time.sleep(min(max(2e-4, (now - start) / 20), 2e-3))


def _say(line: str) -> None:
    sys.stderr.write(f"ringtrain.horovod: {line}\n")
    sys.stderr.flush()


def mismatch_message(kind: str, name, described: list) -> str:
    """One line naming each field that differs among the ranks' operations, with every rank's value.

    ``described``: per rank, (kind, name, describe) or None for a rank inside join.

    >>> mismatch_message("allreduce", "a", [("allreduce", "a", {"dtype": "f32"}), ("allreduce", "b", {"dtype": "f32"})])
    "allreduce 'a': ranks submitted different operations: name (rank 0: 'a'; rank 1: 'b')"
    """
    active = {r: d for r, d in enumerate(described) if d is not None}
    fields: list[tuple[str, dict]] = [("operation", {r: d[0] for r, d in active.items()}),
                                      ("name", {r: d[1] for r, d in active.items()})]
    keys = dict.fromkeys(k for d in active.values() for k in d[2])
    fields += [(k, {r: d[2].get(k, "(none)") for r, d in active.items()}) for k in keys]
    differing = [f"{field} ({_per_rank(values)})" for field, values in fields
                 if len({repr(v) for v in values.values()}) > 1]
    if not differing:  # equal descriptions with different hashes: a collision, or unhashable reprs
        differing = ["their descriptions hash differently"]
    return f"{kind} {name!r}: ranks submitted different operations: " + ", ".join(differing)


def _per_rank(values: dict) -> str:
    groups: dict[str, list[int]] = {}
    for rank, value in values.items():
        groups.setdefault(repr(value), []).append(rank)
    return "; ".join(f"rank{'s' if len(r) > 1 else ''} {','.join(map(str, r))}: {v}" for v, r in groups.items())
