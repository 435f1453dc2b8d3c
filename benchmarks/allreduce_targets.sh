#!/usr/bin/env bash
# The allreduce targets of the foundation issue, on one machine over shared memory:
#   2 ranks, 4 B - 256 MiB, all algorithms against in-place MPI_Allreduce;
#   4 ranks, 1 - 64 MiB, ring against the parameter-server baseline.
# Writes JSON to benchmarks/results/ and prints each target with its measured ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
mkdir -p "$out"
PY=${PYTHON:-python}
MPIEXEC=${MPIEXEC:-$(dirname "$(command -v "$PY")")/mpiexec}
timeout 3600 "$MPIEXEC" -n 2 "$PY" -m ringtrain bench allreduce --repeat 7 \
    --algorithms ring,recursive_doubling,ps,auto,auto+check --json "$out/allreduce_n2_shm.json"
timeout 3600 "$MPIEXEC" -n 4 "$PY" -m ringtrain bench allreduce --min-bytes 1M --max-bytes 64M \
    --repeat 5 --algorithms ring,ps --json "$out/allreduce_n4_shm.json"
"$PY" benchmarks/check_allreduce_targets.py "$out/allreduce_n2_shm.json" "$out/allreduce_n4_shm.json"
