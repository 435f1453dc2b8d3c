#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for ringtrain's tests and CI.
#
#   slurm/local-cluster.sh start    install (Debian packages), configure and start munged, slurmctld, slurmd
#   slurm/local-cluster.sh stop     cancel jobs, stop exactly the daemons it started (by pid file)
#   slurm/local-cluster.sh env      print the export line clients need (SLURM_CONF)
#
# Runs as root. Everything lives under $RINGTRAIN_SLURM_DIR (default
# /tmp/ringtrain-slurm). The node advertises 4 CPUs so that 4-task jobs fit on
# a 2-core machine (oversubscribed, as in the rest of the test suite).
set -euo pipefail
DIR=${RINGTRAIN_SLURM_DIR:-/tmp/ringtrain-slurm}
HOST=$(hostname -s)

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    local apt=(apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends slurmctld slurmd slurm-client munge)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$DIR/apt.log" 2>&1 || {
        apt-get -o DPkg::Lock::Timeout=300 update >>"$DIR/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" >>"$DIR/apt.log" 2>&1
    } || { echo "local-cluster: installing Slurm failed; see $DIR/apt.log" >&2; exit 1; }
}

configure() {
    mkdir -p "$DIR"/{state,spool,log,run,munge}
    chmod 755 "$DIR/munge"   # munged refuses a 0700 socket directory
    [ -f "$DIR/munge/munge.key" ] || mungekey -c -k "$DIR/munge/munge.key"
    chmod 600 "$DIR/munge/munge.key"
    # slurmctld -c starts from job id 1 again, and MPICH names its shared
    # memory after the job: a rank killed in an earlier session can leave a
    # segment that a new job with the same id then fails on ("Out of memory"
    # in MPIDI_POSIX_comm_bootstrap). Each start gets its own id range instead.
    local first_job_id=$(( ($(date +%s) % 600000) * 100 + 1 ))
    cat >"$DIR/slurm.conf" <<CONF
ClusterName=ringtrain-local
FirstJobId=$first_job_id
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    mkdir -p "$DIR"
    install_packages
    configure
    export SLURM_CONF=$DIR/slurm.conf
    running "$DIR/run/munged.pid" || munged --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed"
    running "$DIR/run/slurmctld.pid" || slurmctld -c
    running "$DIR/run/slurmd.pid" || slurmd
    for _ in $(seq 1 100); do
        if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
            echo "local-cluster: up ($DIR); export SLURM_CONF=$DIR/slurm.conf"
            return
        fi
        sleep 0.2
    done
    echo "local-cluster: the node did not become idle; logs in $DIR/log" >&2
    tail -n 20 "$DIR"/log/*.log >&2 || true
    exit 1
}

stop() {
    export SLURM_CONF=$DIR/slurm.conf
    # slurmstepd ignores SIGTERM: cancel jobs before stopping slurmd.
    if [ -f "$SLURM_CONF" ] && running "$DIR/run/slurmctld.pid"; then
        scancel --full --quiet --user=root 2>/dev/null || true
        for _ in $(seq 1 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
    fi
    for daemon in slurmd slurmctld munged; do
        local pidfile="$DIR/run/$daemon.pid" pid
        if running "$pidfile"; then
            # Read once: a daemon removes its own pid file as it exits.
            pid=$(cat "$pidfile")
            kill "$pid"
            # An exited daemon may linger as a zombie for a while; that counts as stopped.
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" = Z ] && break
                sleep 0.1
            done
        fi
        rm -f "$pidfile"
    done
    echo "local-cluster: stopped"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$DIR/slurm.conf" ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
