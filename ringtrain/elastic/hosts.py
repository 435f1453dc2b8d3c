"""``launch --elastic``'s hosts: where they come from, and which of them answer now.

Where an MPI cannot shrink a job in place (MPICH), losing a node means a
restart; an elastic launch restarts on the hosts that still answer, and
grows back when the others return. The hosts and their slots (ranks per
host) come from ``--hosts a:4,b:4``, else ``--hostfile`` (one ``host[:slots]``
per line, # comments), else Slurm's allocation (``SLURM_JOB_NODELIST``
expanded by ``scontrol show hostnames``, slots from ``SLURM_TASKS_PER_NODE``).

A host answers when ``--host-check`` succeeds for it within its timeout: by
default ``mpiexec -hosts HOST -n 1 true``, the launcher itself reaching it.
"""
import os
import re
import shlex
import subprocess

from ..fault.errors import UsageError

CHECK_SECONDS = 10.0


def parse(text: str, origin: str) -> list[tuple[str, int]]:
    """``a:4,b`` (or lines of a hostfile) as [(host, slots)]; a host without slots has 1.

    >>> parse("n1:4,n2:2, n3", "--hosts")
    [('n1', 4), ('n2', 2), ('n3', 1)]
    >>> parse("a:4  # was a:8, b\\nc:2", "--hostfile h")
    [('a', 4), ('c', 2)]
    """
    hosts = []
    items = [item for line in text.splitlines() for item in line.split("#", 1)[0].split(",")]
    for item in map(str.strip, items):
        if not item:
            continue
        name, _, slots = item.partition(":")
        if not name or (slots and not (slots.isdigit() and int(slots) > 0)):
            raise UsageError(f"launch --elastic: {origin}: {item!r} is not host or host:slots (slots a whole number "
                             "from 1)")
        hosts.append((name, int(slots or 1)))
    if not hosts:
        raise UsageError(f"launch --elastic: {origin} names no host — give host:slots entries")
    if len({h for h, _ in hosts}) != len(hosts):
        raise UsageError(f"launch --elastic: {origin} names a host twice — give each host once, with its slots")
    return hosts


def slurm_slots(tasks_per_node: str) -> list[int]:
    """Slurm's ``SLURM_TASKS_PER_NODE`` (``4(x2),3``) as one number per node.

    >>> slurm_slots("4(x2),3")
    [4, 4, 3]
    """
    slots = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise UsageError(f"launch --elastic: SLURM_TASKS_PER_NODE={tasks_per_node!r} is not Slurm's form "
                             "(4(x2),3)")
        slots += [int(m.group(1))] * int(m.group(2) or 1)
    return slots


def find(hosts: str | None, hostfile: str | None) -> list[tuple[str, int]]:
    """The job's full set of hosts and slots, from the flags or Slurm (see the module's text)."""
    if hosts:
        return parse(hosts, f"--hosts {hosts}")
    if hostfile:
        try:
            with open(hostfile) as f:
                return parse(f.read(), f"--hostfile {hostfile}")
        except OSError as e:
            raise UsageError(f"launch --elastic: --hostfile {hostfile}: {e.strerror} — give a readable file of "
                             "host:slots lines") from None
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if nodelist:
        tasks = os.environ.get("SLURM_TASKS_PER_NODE", "1")
        slots = slurm_slots(tasks)  # its form first: a bad one is said without asking scontrol
        try:
            names = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                   check=True).stdout.split()
        except (OSError, subprocess.CalledProcessError) as e:
            raise UsageError(f"launch --elastic: SLURM_JOB_NODELIST={nodelist!r}: scontrol could not expand it "
                             f"({e}) — give --hosts or --hostfile") from None
        if len(slots) != len(names):
            raise UsageError(f"launch --elastic: SLURM_TASKS_PER_NODE={tasks!r} gives {len(slots)} nodes, "
                             f"SLURM_JOB_NODELIST={nodelist!r} {len(names)}")
        return list(zip(names, slots))
    raise UsageError("launch --elastic: no hosts to shrink to or grow back on — give --hosts a:4,b:4 or --hostfile, "
                     "or run inside a Slurm allocation")


def answering(hosts: list[tuple[str, int]], check: str) -> list[tuple[str, int]]:
    """The hosts for which ``check`` (a command with ``{host}``) succeeds within CHECK_SECONDS."""
    alive = []
    for host, slots in hosts:
        try:
            ok = subprocess.run(shlex.split(check.replace("{host}", host)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, timeout=CHECK_SECONDS).returncode == 0
        except (subprocess.TimeoutExpired, OSError):
            ok = False
        if ok:
            alive.append((host, slots))
    return alive


def argument(hosts: list[tuple[str, int]]) -> str:
    """mpiexec's ``-hosts`` value.

    >>> argument([("a", 2), ("b", 1)])
    'a:2,b:1'
    """
    return ",".join(f"{h}:{s}" for h, s in hosts)
