"""Environment variables, generated from ringtrain/environment.py's table: a bad value is one line and exit 2.

The command line checks the environment before it imports torch, so a
refused run costs half a second: every variable is tried with every bad kind
of value (text, negative, zero, fractions, NaN, huge, empty) that its rule refuses.
"""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from ringtrain.environment import VARIABLES, validate_environment, value, value_or_default
from ringtrain.fault.errors import UsageError
from tests.launch import run_mpi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CANDIDATES = ["", " ", "abc", "-5", "0", "1.5", "nan", "9" * 30, "1e400", "a b"]
# A value each variable allows, for the other direction.
GOOD = {"OMP_NUM_THREADS": "2", "RINGTRAIN_POLL_SLEEP_US": "50", "RINGTRAIN_RING_MIN_BYTES": "0",
        "RINGTRAIN_CHAIN_MIN_BYTES": "4096", "RINGTRAIN_HIERARCHICAL_MIN_BYTES": "1048576", "RINGTRAIN_CHECK": "0",
        "RINGTRAIN_NODE_SIZE": "2", "RINGTRAIN_COST_MODEL": "model.json", "RINGTRAIN_EXPECT_WORLD_SIZE": "1",
        "RINGTRAIN_CACHE": "/tmp/cache", "MPIEXEC": "/usr/bin/mpiexec", "MASTER_ADDR": "10.0.0.1",
        "GLOO_SOCKET_IFNAME": "eth0,eth1", "HOROVOD_STALL_CHECK_TIME_SECONDS": "30",
        "HOROVOD_STALL_CHECK_DISABLE": "1", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "120"}
NUMERIC = [name for name, v in VARIABLES.items() if v.rule.parse is not str]


def refused(name: str) -> list[str]:
    """The candidates that ``name``'s rule does not allow."""
    rule = VARIABLES[name].rule
    out = []
    for text in CANDIDATES:
        try:
            rule.value_of(text)
        except ValueError:
            out.append(text)
    return out


def ringtrain(env: dict, *args: str) -> subprocess.CompletedProcess:
    """``python -m ringtrain ARGS`` on one rank (no mpiexec), with ``env`` added to a clean copy of ours."""
    base = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    return subprocess.run([sys.executable, "-m", "ringtrain", *args], env={**base, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_the_table_covers_every_variable_ringtrain_reads():
    found = subprocess.run(["grep", "-rhoE", r"environ(\.get)?[\[(]\"[A-Z_]+\"", "ringtrain"], cwd=ROOT,
                           capture_output=True, text=True).stdout.split()
    read = {word.split('"')[1] for word in found}
    # Facts Slurm sets, not settings: launch --elastic reads the allocation from them and refuses a form it
    # does not know in one line of its own (elastic/hosts.py; test_elastic_launch.py).
    read -= {"SLURM_JOB_NODELIST", "SLURM_TASKS_PER_NODE"}
    assert read and read <= set(VARIABLES), read - set(VARIABLES)
    assert set(GOOD) == set(VARIABLES)


@pytest.mark.parametrize("name", list(VARIABLES))
def test_each_rule_refuses_what_it_must(name):
    bad = refused(name)
    assert "" in bad and " " in bad  # unset the variable for its default
    if name in NUMERIC:
        assert {"abc", "-5", "nan", "1e400"} <= set(bad)
    assert GOOD[name] not in bad


@pytest.mark.parametrize("name", list(VARIABLES))
def test_a_bad_value_is_one_line_and_exit_2_before_anything_runs(name):
    with ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda text: (text, ringtrain({name: text}, "train", "--steps", "1")), refused(name)))
    allowed = VARIABLES[name].rule.allowed
    for text, out in runs:
        assert out.returncode == 2, (text, out.stderr)
        assert "Traceback" not in out.stderr and out.stdout == ""
        assert out.stderr.splitlines() == [f"ringtrain: environment variable {name}={text!r} is not allowed — "
                                           f"{allowed}, or unset for {VARIABLES[name].unset}"]


def test_good_values_pass_the_check():
    for name, text in GOOD.items():
        assert value(name, {name: text}) is not None
    validate_environment(GOOD)
    out = ringtrain(GOOD, "--version")  # through cli.main's check, then the parser
    assert out.returncode == 0 and out.stdout.startswith("ringtrain "), out.stderr


def test_unset_gives_the_default_and_import_time_reads_never_raise():
    assert value("RINGTRAIN_RING_MIN_BYTES", {}) == 16 << 20 and value("OMP_NUM_THREADS", {}) is None
    assert value_or_default("RINGTRAIN_CHECK", {"RINGTRAIN_CHECK": "maybe"}) is True
    with pytest.raises(UsageError, match="RINGTRAIN_CHECK='maybe' is not allowed — 1, 0, true or false"):
        value("RINGTRAIN_CHECK", {"RINGTRAIN_CHECK": "maybe"})


def test_under_mpiexec_rank_0_alone_says_it_and_every_rank_exits_2(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "0", "RINGTRAIN_POLL_SLEEP_US": "-5"}
    out = run_mpi(2, ["-m", "ringtrain", "train", "--steps", "1", "--out-dir", str(tmp_path)], cwd=ROOT, env=env)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "Abort" not in out.stderr and "libgomp" not in out.stderr
    [line] = out.stderr.splitlines()  # both variables, in one line, from rank 0 only
    assert line.startswith("ringtrain: environment variable OMP_NUM_THREADS='0' is not allowed — a whole number "
                           "from 1 to 1024")
    assert "RINGTRAIN_POLL_SLEEP_US='-5' is not allowed — a finite number >= 0 and < 1e+06" in line


def test_launch_refuses_a_bad_environment_before_it_starts_mpiexec():
    out = ringtrain({"OMP_NUM_THREADS": "abc"}, "launch", "-n", "2", "--max-restarts", "3", "--", "train")
    assert out.returncode == 2 and "launch: attempt" not in out.stdout, out.stdout + out.stderr
    assert out.stderr.startswith("ringtrain: environment variable OMP_NUM_THREADS='abc' is not allowed")
