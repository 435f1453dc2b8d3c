#!/usr/bin/env bash
# Every test: the serial ones and the package's doctests once, the multi-rank ones at each world size in
# RINGTRAIN_TEST_SIZES (default "1 2 3 4"), each mpiexec under a timeout.
# Exits non-zero if any run fails, including a run that collects no tests.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
MPIEXEC=${MPIEXEC:-$(dirname "$(command -v "$PY")")/mpiexec}
[ -x "$MPIEXEC" ] || MPIEXEC=$(command -v mpiexec) || { echo "tests/run.sh: no mpiexec found" >&2; exit 2; }
SIZES=${RINGTRAIN_TEST_SIZES:-"1 2 3 4"}
MPI_TIMEOUT=${RINGTRAIN_TEST_MPI_TIMEOUT:-900}
logs=$(mktemp -d)
passed=0 failed=0 status=0

count() {  # count WORD FILE: the number before WORD in pytest's closing line
    grep -aE '[0-9]+ (passed|failed|error)' "$2" | tail -n 1 | grep -aoE "[0-9]+ $1" | grep -oE '[0-9]+' || echo 0
}

run() {  # run NAME COMMAND...
    local name=$1 rc
    shift
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$logs/$name.out"
    rc=${PIPESTATUS[0]}
    passed=$((passed + $(count passed "$logs/$name.out")))
    failed=$((failed + $(count failed "$logs/$name.out") + $(count error "$logs/$name.out")))
    if [ "$rc" -ne 0 ]; then
        status=1
        echo "=== $name FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ', timed out')$([ "$rc" -eq 5 ] && echo ', no tests collected'))"
        for f in "$logs/$name"/rank*.log; do
            [ -s "$f" ] && { echo "--- $f"; tail -n 60 "$f"; }
        done
    fi
}

# The whole jobs (Slurm, five ranks, killed and stalled ranks) run as a part of their own, each part with its
# own timeout: together with the rest they outgrew one.
JOBS="tests/test_slurm.py tests/test_five_ranks.py tests/test_fault_tolerance.py tests/test_backend_faults.py
    tests/test_elastic_launch.py"
run serial timeout -k 10 "$MPI_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider tests --ignore=tests/mpi \
    --ignore=tests/openmpi \
    --ignore=tests/test_failure_matrix.py $(for f in $JOBS; do printf -- '--ignore=%s ' "$f"; done)
run jobs timeout -k 10 "$MPI_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider $JOBS
# The failure matrix (generated faults, each a whole run): its own timeout, as it is the longest part.
run matrix timeout -k 10 "$MPI_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider tests/test_failure_matrix.py
# The examples in the package's docstrings, checked as written.
run doctests timeout -k 10 "$MPI_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider --doctest-modules ringtrain
# Only rank 0 reports on the terminal; rank r writes to np<N>/rank<r>.log,
# shown when the run fails.
rank0_only='r=${PMI_RANK:-${OMPI_COMM_WORLD_RANK:-0}}; d=$1; shift
if [ "$r" = 0 ]; then exec "$@"; else exec "$@" >"$d/rank$r.log" 2>&1; fi'
for n in $SIZES; do
    mkdir -p "$logs/np$n"
    run "np$n" timeout -k 10 "$MPI_TIMEOUT" "$MPIEXEC" -n "$n" sh -c "$rank0_only" sh "$logs/np$n" \
        "$PY" -m pytest -q -p no:cacheprovider --with-mpi tests/mpi
done
# Open MPI, in an environment of its own (tests/openmpi_env.sh makes it on first use; RINGTRAIN_TEST_OPENMPI=0
# leaves this part out): train --elastic's jobs under ULFM, then the collectives, the reducer, training and
# checkpoints at 2 and 4 ranks.
if [ "${RINGTRAIN_TEST_OPENMPI:-1}" != 0 ]; then
    if OMPI=$(timeout -k 10 "$MPI_TIMEOUT" bash tests/openmpi_env.sh); then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
        run openmpi-elastic env RINGTRAIN_TEST_OPENMPI=1 timeout -k 10 "$MPI_TIMEOUT" "$OMPI/python" -m pytest -q \
            -p no:cacheprovider tests/openmpi
        OMPI_TESTS="tests/mpi/test_allreduce.py tests/mpi/test_collectives.py tests/mpi/test_compressed_allreduce.py
            tests/mpi/test_hierarchical.py tests/mpi/test_rank_ordered.py tests/mpi/test_reducer_arguments.py
            tests/mpi/test_thread_safety.py tests/mpi/test_buffer_sync.py tests/mpi/test_training.py
            tests/mpi/test_fit.py tests/mpi/test_resume.py tests/mpi/test_zero.py tests/mpi/test_shard_copies.py"
        for n in 2 4; do
            mkdir -p "$logs/openmpi-np$n"
            run "openmpi-np$n" timeout -k 10 "$MPI_TIMEOUT" "$OMPI/mpirun" --oversubscribe --mca pml ob1 \
                --mca btl tcp,self -n "$n" sh -c "$rank0_only" sh "$logs/openmpi-np$n" \
                "$OMPI/python" -m pytest -q -p no:cacheprovider --with-mpi $OMPI_TESTS
        done
    else
        echo "=== openmpi FAILED: tests/openmpi_env.sh could not make the Open MPI environment"
        status=1
    fi
fi
echo "tests: $passed passed, $failed failed"
exit "$status"
