"""``launch --elastic``: restart on the hosts that answer, and grow back to them all at a checkpoint.

For an MPI that cannot shrink a job in place (MPICH): when an attempt fails,
the hosts are checked (hosts.answering) and the next attempt runs on those
that answer, with as many ranks as they have slots (never more than -n),
resuming from the newest checkpoint as every restart does. While it runs
short, the missing hosts are checked every ``--regrow-every`` seconds; once
one answers again, the job is sent SIGUSR1, so it writes a checkpoint after
its current step and exits 75, and the next attempt starts at once on every
answering host. Fewer slots than ``--min-ranks`` stop the launch with exit
code 76, as a dead rank does without --elastic. Restarts are counted against
``--max-restarts``; a regrow is not a failure and is not counted.
"""
import signal
import subprocess
import sys
import time

from ..fault import supervise
from ..fault.exit_codes import EXIT_PREEMPTED, EXIT_TIMEOUT
from . import hosts as hostlist


def run(args, command: list[str], mpiexec: str, state: dict) -> int:
    """The elastic launch loop; ``state["job"]`` is the running job, for the caller's signal forwarding."""
    every = hostlist.find(args.hosts, args.hostfile)
    check = args.host_check or f"{mpiexec} -hosts {{host}} -n 1 true"
    full = min(args.np, sum(s for _, s in every))
    restarts, attempt = 0, 0
    while True:
        attempt += 1
        if state["interrupted"]:  # a signal during the back-off or the host checks: no further attempt
            print(f"launch: signal {state['interrupted'][-1]} received; not starting attempt {attempt}", flush=True)
            return 128 + state["interrupted"][-1]
        alive = hostlist.answering(every, check)
        ranks = min(args.np, sum(s for _, s in alive))
        missing = [h for h, _ in every if h not in dict(alive)]
        if ranks < args.min_ranks:
            print(f"launch: the answering hosts have {ranks} slots ({', '.join(missing)} not answering), below "
                  f"--min-ranks {args.min_ranks}; stopping (exit code {EXIT_TIMEOUT})", flush=True)
            return EXIT_TIMEOUT
        cmd = [mpiexec, "-hosts", hostlist.argument(alive), "-n", str(ranks), *args.mpiexec_args.split(),
               sys.executable, "-m", "ringtrain", *command]
        short = f" ({', '.join(missing)} not answering)" if missing else ""
        print(f"launch: attempt {attempt} at {ranks} of {full} ranks{short}: {' '.join(cmd)}", flush=True)
        job = state["job"] = subprocess.Popen(cmd)
        regrew = _wait(job, every, dict(alive), check, args.regrow_every if ranks < full else None)
        code = job.wait()
        if regrew and code == EXIT_PREEMPTED and not state["interrupted"]:
            print(f"launch: attempt {attempt} checkpointed and stopped so that {', '.join(regrew)} can rejoin; "
                  "restarting now", flush=True)
            continue
        status = supervise.verdict(attempt, code, restarts + 1, args.max_restarts, state["interrupted"])
        if status is not None:
            return status
        restarts += 1
        wait = min(30, 2 ** (restarts - 1))
        where = supervise.restart_point(command)
        print(f"launch: attempt {attempt} ended with {supervise.describe_exit(code)}; restarting in {wait} s on the "
              f"hosts that answer then (restart {restarts} of {args.max_restarts})"
              + (f" from {where}" if where else ""), flush=True)
        time.sleep(wait)


def _wait(job, every, alive: dict, check: str, regrow_every: float | None) -> list[str]:
    """Wait for ``job``; running short, ask it to stop at a checkpoint once a missing host answers again.
    Returns the hosts that came back (empty if none did before the job ended)."""
    if regrow_every is None:
        return []
    while True:
        try:
            job.wait(timeout=regrow_every)
            return []
        except subprocess.TimeoutExpired:
            pass
        back = [h for h, _ in hostlist.answering([x for x in every if x[0] not in alive], check)]
        if back:
            print(f"launch: {', '.join(back)} answering again; asking the job to checkpoint and stop (SIGUSR1) "
                  "so that the next attempt runs on every answering host", flush=True)
            job.send_signal(signal.SIGUSR1)
            return back
