"""The world-size check: a launcher and an MPI that disagree on PMI start N singletons instead of one job."""
from .. import environment
from .errors import UsageError


def check_world_size() -> None:
    """Fail loudly if RINGTRAIN_EXPECT_WORLD_SIZE is set and MPI sees another world size.

    Job scripts set it to the number of tasks they asked for: a launcher with
    the wrong PMI setting starts N independent rank-0 "singletons" that would
    otherwise each train alone. (Its value was checked at start-up: a whole number >= 1.)

    >>> check_world_size()  # unset: nothing to check
    """
    expected = environment.value("RINGTRAIN_EXPECT_WORLD_SIZE")
    if expected is None:
        return
    from mpi4py import MPI
    size = MPI.COMM_WORLD.Get_size()
    if expected != size:
        # Every rank sees the same mismatch, so every rank raises it: agreed.
        raise UsageError(f"MPI sees a world of {size} rank(s) but the job started {expected} tasks "
                         f"(RINGTRAIN_EXPECT_WORLD_SIZE) — the launcher and MPI disagree on PMI: under Slurm use "
                         f"srun --mpi=pmi2 with the mpich wheel (see slurm/README.md)", agreed=True)
