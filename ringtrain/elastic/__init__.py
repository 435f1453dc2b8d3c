"""Elastic training: the survivors of a dead rank shrink the job and go on (``train --elastic``).

- ``ulfm``: revoke, agree and shrink, with Open MPI's fault-tolerance extension;
- ``rounds``: a run as rounds, one per membership, and what one hands the next;
- ``inject``: faults on purpose, for the tests and trials.
"""
from mpi4py import MPI

from ..fault.errors import UsageError
from .rounds import BelowFloor, Carried, RankLost, leave_round, run_rounds
from .ulfm import can_shrink, is_rank_failure

__all__ = ["BelowFloor", "Carried", "RankLost", "can_shrink", "is_rank_failure", "leave_round",
           "refuse_unless_possible", "run_rounds", "shrunk_line"]


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


def shrunk_line(carried: Carried, world: int) -> str:
    """Rank 0's line when the survivors start a round."""
    dead = carried.dead
    return (f"ringtrain: rank{'s' if len(dead) > 1 else ''} {', '.join(map(str, dead))} of {carried.world_before} "
            f"died; {world} rank{'s' if world > 1 else ''} go on from step {carried.step} (its model and optimizer "
            f"state, in memory), redoing step {carried.step + 1}"
            + ("; compressor state restarts at zero" if carried.tuned.compression_name != "none" else ""))
