"""Elastic training: the survivors of a dead rank shrink the job and go on (``train --elastic``).

- ``ulfm``: revoke, agree and shrink, with Open MPI's fault-tolerance extension;
- ``rounds``: a run as rounds, one per membership, and what one hands the next;
- ``inject``: faults on purpose, for the tests and trials;
- ``hosts`` and ``launch``: ``launch --elastic``, restarts on the hosts that answer (MPICH).

Nothing is imported here: ``launch`` runs outside MPI, and importing mpi4py's MPI would start it.
"""
