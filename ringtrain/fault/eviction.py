"""Which stalled ranks a watchdog evicts under --elastic, and ending a frozen process safely.

A rank is stalled when the others wait for it past their deadline. It either
answers the watchdog's ping but waits in no collective (its training thread
hangs: a data read, a device), and is told to leave; or it answers nothing,
frozen whole, and a waiting rank on its machine ends it with SIGKILL. A
machine is a host name and a pid namespace, and a process is named by its pid
and its start time, so that a kill never reaches another container's process
or a later process that reuses the pid.

>>> me = Place("a", 1, 10, 5, 0); frozen = Place("a", 1, 11, 5, 1); waiting = Place("b", 1, 12, 5, 2)
>>> plan(0, [me, frozen, waiting], silent=[1], idle=[])
Plan(stalled=[1], actor=True, mine=[1], unreachable=[])
>>> plan(2, [me, frozen, waiting], silent=[1], idle=[])
Plan(stalled=[1], actor=False, mine=[], unreachable=[])
"""
import os
import signal
import socket
from typing import NamedTuple


class Place(NamedTuple):
    host: str
    pid_namespace: int
    pid: int
    started: int
    """The process's start time, in clock ticks since boot (/proc/PID/stat)."""
    launched: int
    """Its rank in the launch (COMM_WORLD)."""


class Plan(NamedTuple):
    stalled: list
    actor: bool
    """Whether this rank is the lowest that waits: it tells the idle ones to leave, or aborts the job."""
    mine: list
    """Frozen ranks this rank ends: it is the lowest waiting rank on their machine."""
    unreachable: list
    """Frozen ranks with no waiting rank on their machine: nothing can end them, so the job aborts."""


def here(launched: int) -> Place:
    """This process's place."""
    return Place(socket.gethostname(), os.stat("/proc/self/ns/pid").st_ino, os.getpid(), _started(os.getpid()),
                 launched)


def plan(me: int, places: list, silent: list, idle: list) -> Plan:
    """What rank ``me`` does about ``silent`` (answering nothing) and ``idle`` (waiting in no collective)
    ranks. Every waiting rank that saw the same comes to the same plan."""
    stalled = sorted({*silent, *idle})
    waiting = [p for p in range(len(places)) if p not in stalled]
    if me not in waiting:
        return Plan(stalled, False, [], [])
    killer = {p: min((w for w in waiting if _machine(places[w]) == _machine(places[p])), default=None)
              for p in silent}
    return Plan(stalled, me == waiting[0], sorted(p for p in silent if killer[p] == me),
                sorted(p for p in silent if killer[p] is None))


def end(place: Place) -> bool:
    """SIGKILL the process at ``place`` if it is still that process; whether it was sent."""
    try:
        if _started(place.pid) != place.started:
            return False  # gone, and its pid maybe taken by another process
        os.kill(place.pid, signal.SIGKILL)
        return True
    except OSError:  # gone meanwhile, or not ours to end
        return False


def _machine(place: Place) -> tuple:
    return place.host, place.pid_namespace


def _started(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return int(fields[19])  # field 22 of the line; the first two are before the split
