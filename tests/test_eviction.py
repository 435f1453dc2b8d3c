"""fault/eviction.py: who ends which stalled rank, and a SIGKILL that reaches only the process meant."""
import subprocess
import sys

from ringtrain.fault import eviction
from ringtrain.fault.eviction import Place


def place(host, pid, launched, namespace=1):
    return Place(host, namespace, pid, 100, launched)


def test_the_lowest_waiting_rank_acts_and_each_machine_ends_its_own_frozen_rank():
    places = [place("a", 10, 0), place("a", 11, 1), place("b", 12, 2), place("b", 13, 3), place("b", 14, 4)]
    # Rank 1 (host a) is frozen; rank 3 (host b) answers but waits in no collective.
    plans = {me: eviction.plan(me, places, silent=[1], idle=[3]) for me in range(5)}
    assert [p.stalled for p in plans.values()] == [[1, 3]] * 5
    assert [me for me, p in plans.items() if p.actor] == [0]
    assert {me: p.mine for me, p in plans.items()} == {0: [1], 1: [], 2: [], 3: [], 4: []}
    assert all(p.unreachable == [] for p in plans.values())


def test_a_frozen_rank_alone_on_its_machine_cannot_be_ended():
    places = [place("a", 10, 0), place("b", 11, 1), place("b", 12, 2, namespace=2)]  # another container
    plan = eviction.plan(0, places, silent=[1], idle=[])
    assert plan.actor and plan.mine == [] and plan.unreachable == [1]
    # Rank 2 shares rank 1's host name but not its pid namespace: it must not end it either.
    assert eviction.plan(2, places, silent=[1], idle=[]).mine == []


def test_a_stalled_rank_plans_nothing():
    places = [place("a", 10, 0), place("a", 11, 1)]
    assert eviction.plan(1, places, silent=[], idle=[1]) == eviction.Plan([1], False, [], [])


def test_end_kills_only_the_process_that_was_recorded():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        now = eviction.here(0)._replace(pid=child.pid)
        now = now._replace(started=eviction._started(child.pid))
        assert not eviction.end(now._replace(started=now.started + 1))  # a reused pid: left alone
        assert child.poll() is None
        assert eviction.end(now)
        assert child.wait(timeout=10) == -9
        assert not eviction.end(now)  # gone
    finally:
        child.kill()
        child.wait()
