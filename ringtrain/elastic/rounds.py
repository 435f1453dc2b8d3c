"""``train --elastic``: when a rank dies, the survivors shrink the job and train on, in the same processes.

A run is a sequence of rounds, one per membership. A round is an ordinary
``train`` on the round's communicator. When MPI reports a dead peer
anywhere in it (a collective, the communication thread, a checkpoint), the
rank that saw it revokes every communicator of the round, so that every
survivor stops too, and leaves the round with ``RankLost``. The survivors
then shrink to a communicator of their own and start the next round from
what they hold in memory (``Carried``): the model and optimizer as of the
last committed step, the same run id, lineage and tuning, the directory
locks where rank 0 survived. The model changes only in a committed step
(ulfm.commit), so every survivor holds the same step, and the step that
failed is redone at the new size. A rank that stalls (alive, not coming to
the collective) is ended by the others' watchdog once their wait passes
--timeout (fault/watchdog.py), and is then lost like any other.

Each round builds what hangs off its communicator afresh: the reducer and
its communicators and node groups, the watchdog, the data shard, the metrics
writer and the trace. Data-parallel state is replicated, so a dead rank
takes nothing with it but its own compressor state (error feedback's
residual); the survivors keep theirs (elastic/residuals.py). Under ZeRO-1/2 it
takes its optimizer shard, of which the next rank keeps a copy
(elastic/shard_copies.py); train/survivors.py says where each round starts.

Every round ends with a commit, as every step does, and so does an exit all
ranks decided together (a signal's stop, bad input): a collective can
complete on one rank and fail on another, and a rank must not leave while a
peer still needs it in an agreement.

Below ``--min-ranks`` the survivors write a checkpoint of the committed step
(one more round, which only does that) and stop with exit code 76.
"""
import dataclasses
import time

from mpi4py import MPI

from ..fault.errors import OneLineError, UsageError
from ..fault.exit_codes import EXIT_TIMEOUT
from . import finalize, ulfm
from .shard_copies import ShardCopies
from .ulfm import can_shrink


@dataclasses.dataclass
class Carried:
    """What a round hands the next one."""
    task: object
    optimizer: object
    step: int
    """Steps committed: the model and optimizer stand after this many."""
    run: str
    lineage: str
    tuned: object
    places: object
    """The directory locks (rank 0's; empty elsewhere)."""
    result: dict
    """The losses, times and validations of the earlier rounds."""
    compression: dict | None = None
    """This rank's compressor state as of ``step`` (elastic/residuals.py); None where nothing compresses."""
    shards: ShardCopies | None = None
    """--zero 1/2: the copies this rank holds of ``step`` (elastic/shard_copies.py); None where none."""
    saved: int = 0
    """The step of the latest checkpoint written: one due at ``step`` but cut off by the failure is written
    first."""
    last: int = 0
    """The step the run stops after (--steps, or the first round's --stop-after point)."""
    dead: list = dataclasses.field(default_factory=list)
    """Ranks of the previous round that died (its numbering)."""
    launched: list = dataclasses.field(default_factory=list)
    """The same, as ranks of the launch (COMM_WORLD), which RINGTRAIN_KILL and the trace's rows name."""
    members: list = dataclasses.field(default_factory=list)
    """The launch's ranks of the membership before the recovery, in its order."""
    world_before: int = 0
    """Its size; 0 once the recovery is done (a death before that joins the same recovery)."""
    failed_at: float = 0.0
    """time.monotonic() when this rank saw the failure: the recovery's cost is counted from it."""
    recoveries: int = 0
    trace: tuple | None = None
    """(events, clock offset) of this process's tracer so far, with --trace."""
    evicted: list = dataclasses.field(default_factory=list)
    """Launch ranks this rank's watchdog evicted for stalling (the lowest waiting rank does: the new rank 0)."""
    stop: str = ""
    """Set below --min-ranks: the round writes a checkpoint and raises BelowFloor with this text."""


class RankLost(Exception):
    """Leaves a round whose communicator lost a rank; carries what the next round starts from."""

    def __init__(self, carried: Carried | None):
        super().__init__("a rank died")
        self.carried = carried


def leave_round(comm: MPI.Comm, error: BaseException, carried: Carried | None, also=()) -> RankLost:
    """What a rank does on seeing ``error`` (a rank failure) in a round: revoke the round's communicators
    (and ``also``'s: the tracer's), answer the commit with "no" unless the agreement already ruled, and note
    when."""
    ulfm.revoke_all(comm, also)
    if not _spent(error):
        ulfm.refuse(comm)
    if carried is not None and not carried.failed_at:
        carried.failed_at = time.monotonic()  # a second failure before the first recovery finished counts from the first
    return RankLost(carried)


def _spent(error: BaseException | None) -> bool:
    """Whether the commit's agreement said no on the way to ``error`` (then it is not to be answered again)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ulfm.NotCommitted):
            return True
        error = error.__cause__ or error.__context__
    return False


class BelowFloor(OneLineError):
    """Fewer ranks survive than --min-ranks: the job stops (exit code 76, as for a dead rank without --elastic)."""

    exit_code = EXIT_TIMEOUT


def run_rounds(comm: MPI.Comm, round_, min_ranks: int):
    """``round_(comm, carried)`` until one returns; after each RankLost, on the survivors' communicator."""
    carried = None
    while True:
        try:
            return round_(comm, carried)
        except RankLost as lost:
            comm, carried = _recover(comm, lost, min_ranks)


def _recover(comm: MPI.Comm, lost: RankLost, min_ranks: int) -> tuple[MPI.Comm, Carried | None]:
    """Shrink ``comm`` to the survivors and settle what they start from; again if another rank dies meanwhile.
    Every step is one of ULFM's fault-tolerant calls, so every survivor makes the same ones."""
    carried = lost.carried
    while True:
        shrunk, launched = ulfm.shrink(comm)
        if not launched:  # an MPI error that was not a death after all: the error it is
            raise lost.__cause__ from None
        finalize.shrunk = True
        if carried is not None:
            if carried.world_before:  # a recovery still under way: this death joins it, in one row
                carried.launched = carried.launched + launched
            else:
                carried.members = ulfm.as_launched(comm)
                carried.world_before, carried.launched = comm.Get_size(), launched
            # In the numbering of the membership before the recovery began
            carried.dead = [carried.members.index(r) for r in carried.launched]
            carried.recoveries += 1
        try:
            # A rank that failed before its round's loop began carries nothing: then nobody does, or the
            # survivors' next rounds would start differently (one from memory, one from the checkpoint).
            everyone = shrunk.Agree(int(carried is not None))
        except MPI.Exception as e:
            if e.Get_error_class() not in ulfm.FAILURE_CLASSES:
                raise
            comm = shrunk  # another death, seen by every survivor alike: shrink again
            continue
        if not everyone and carried is not None:
            if carried.places is not None:
                carried.places.close()
            carried = None
        break
    if shrunk.Get_size() < min_ranks:
        left = shrunk.Get_size()
        dead = carried.dead if carried is not None else launched
        stop = (f"rank{'s' if len(dead) > 1 else ''} {', '.join(map(str, dead))} died, leaving {left} "
                f"rank{'s' if left > 1 else ''}, below --min-ranks {min_ranks}; the job stops")
        if carried is None:  # nothing trained in memory yet: the last checkpoint is where to resume
            raise BelowFloor(stop + "; resume it from the last checkpoint", agreed=True) from None
        carried.stop = stop
    return shrunk, carried


def refuse_unless_possible(cfg, comm: MPI.Comm) -> None:
    """One line on every rank (exit code 2) if this MPI cannot shrink, or --min-ranks exceeds the job. Not
    collective: every rank sees the same MPI and flags."""
    reason = can_shrink()
    if reason:
        raise UsageError(f"--elastic: {reason}; or leave --elastic out (a dead rank then stops the job, and "
                         "launch restarts it from the last checkpoint)", agreed=True)
    if cfg.min_ranks > comm.Get_size():
        raise UsageError(f"--min-ranks {cfg.min_ranks} is above the job's {comm.Get_size()} ranks — give at most "
                         f"{comm.Get_size()}", agreed=True)


def shrunk_line(carried: Carried, world: int, start: int, compression: str, back: str = "") -> str:
    """Rank 0's line when the survivors start a round from ``start``; ``compression``: what residuals.restore
    said; ``back``: why they went back to a checkpoint (train/survivors.py), or ""."""
    dead = carried.dead
    redo = f"step {start + 1}" if start == carried.step else f"steps {start + 1}-{carried.step + 1}"
    where = (f"go on from step {start} (its model and optimizer state, in memory), redoing {redo}" if not back
             else f"go back to the checkpoint at step {start}, redoing {redo}, since {back}")
    launch = (f" (of the launch: {', '.join(map(str, carried.launched))})" if carried.launched != dead else "")
    return (f"ringtrain: rank{'s' if len(dead) > 1 else ''} {', '.join(map(str, dead))} of {carried.world_before}"
            f"{launch} {lost_how(carried)}; {world} rank{'s' if world > 1 else ''} {where}"
            + compression)


def lost_how(carried: Carried) -> str:
    """How the recovery's ranks were lost: "died", or, where the watchdog ended them, "stalled and ... evicted"."""
    if carried.evicted and set(carried.launched) <= set(carried.evicted):
        return f"stalled and {'were' if len(carried.launched) > 1 else 'was'} evicted"
    return "died"
