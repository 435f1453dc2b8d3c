"""python -m ringtrain.horovod.run: horovodrun's flags as MPICH hydra's and Open MPI's mpiexec flags, refusals, and
one real launch at 2 ranks.

The mapping is read from --print-command (with --mpi-flavour, so Open MPI's dialect is checked without Open MPI);
the real launch uses the mpiexec beside this Python, as tests/run.sh does.
"""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ringtrain.fault.supervise import mpiexec_path
from ringtrain.horovod import run
from ringtrain.horovod.mpiexec_command import detect_flavour

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "tests" / "scripts" / "horovod_rank_size.py")


def printed(capsys, flavour, *flags, command=("python", "train.py")) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``run.main`` with --print-command under ``flavour``."""
    code = run.main(["--print-command", "--mpi-flavour", flavour, *flags, *command])
    out, err = capsys.readouterr()
    return code, out.strip(), err.strip()


def words(capsys, flavour, *flags) -> list[str]:
    code, out, err = printed(capsys, flavour, *flags)
    assert code == 0, err
    return shlex.split(out)


def has_run(argv: list[str], *run_of_words: str) -> bool:
    """Whether ``run_of_words`` appear in ``argv`` one after another."""
    n = len(run_of_words)
    return any(argv[i:i + n] == list(run_of_words) for i in range(len(argv) - n + 1))


# flag -> (hydra's words, Open MPI's words), each a run that must appear in the command.
MAPPED = {
    "-np": (["-np", "4"], ["-n", "4"], ["-np", "4"]),
    "-H": (["-np", "4", "-H", "h1:2,h2:2"], ["-hosts", "h1:2,h2:2"], ["-H", "h1:2,h2:2"]),
    "--hosts": (["-np", "3", "--hosts", "h1:1,h2:2"], ["-hosts", "h1:1,h2:2"], ["-H", "h1:1,h2:2"]),
    "-H without slots": (["-np", "2", "-H", "h1,h2"], ["-hosts", "h1:1,h2:1"], ["-H", "h1:1,h2:1"]),
    "--network-interface": (["-np", "2", "--network-interface", "eth1"], ["-iface", "eth1"],
                            ["-mca", "btl_tcp_if_include", "eth1", "-mca", "oob_tcp_if_include", "eth1"]),
    "--output-filename": (["-np", "2", "--output-filename", "logs"],
                          ["-outfile-pattern", "logs/rank.%r.stdout", "-errfile-pattern", "logs/rank.%r.stderr"],
                          ["--output-filename", "logs"]),
    "--binding-args": (["-np", "2", "--binding-args=-bind-to core"], ["-bind-to", "core"], ["-bind-to", "core"]),
    "--mpi-args": (["-np", "2", "--mpi-args=-ppn 2 -v"], ["-ppn", "2", "-v", "python"], ["-ppn", "2", "-v", "python"]),
    "--stall-check-warning-time-seconds": (["-np", "2", "--stall-check-warning-time-seconds", "5"],
                                           ["-genv", "HOROVOD_STALL_CHECK_TIME_SECONDS", "5"],
                                           ["-x", "HOROVOD_STALL_CHECK_TIME_SECONDS=5"]),
    "defaults (environment, tagging)": (["-np", "2"], ["-l", "-n", "2"], ["--tag-output"]),
}


@pytest.mark.parametrize("flag", MAPPED)
@pytest.mark.parametrize("flavour", ["hydra", "openmpi"])
def test_each_flag_maps_onto_the_flavours_mpiexec(capsys, flag, flavour):
    flags, hydra, openmpi = MAPPED[flag]
    argv = words(capsys, flavour, *flags)
    assert has_run(argv, *(hydra if flavour == "hydra" else openmpi)), argv
    assert argv[-2:] == ["python", "train.py"], argv


@pytest.mark.parametrize("flavour", ["hydra", "openmpi"])
def test_the_command_starts_with_the_mpiexec_and_ends_with_the_users_command(capsys, flavour, tmp_path):
    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    code, out, err = printed(capsys, flavour, "--mpiexec", str(fake), "-np", "2",
                             command=("python", "train.py", "-p", "3", "--gloo"))
    argv = shlex.split(out)
    assert code == 0 and argv[0] == str(fake) and argv[-5:] == ["python", "train.py", "-p", "3", "--gloo"], out


def test_hostfile_becomes_hydras_host_list_and_open_mpis_own_hostfile(capsys, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the cluster\nh1 slots=2\n\nh2 slots=3  # the big one\nh3\n")
    assert has_run(words(capsys, "hydra", "-np", "6", "--hostfile", str(hostfile)), "-hosts", "h1:2,h2:3,h3:1")
    assert has_run(words(capsys, "openmpi", "-np", "6", "-hostfile", str(hostfile)), "--hostfile", str(hostfile))


def test_ssh_port_and_key_go_to_hydras_launcher_and_open_mpis_rsh_agent(capsys):
    code, out, _ = printed(capsys, "hydra", "-np", "2", "-H", "h1:1,h2:1", "-p", "2222", "-i", "/k/id")
    assert code == 0 and out.startswith("HYDRA_LAUNCHER_EXTRA_ARGS='-p 2222 -i /k/id' "), out
    assert has_run(shlex.split(out), "-launcher", "ssh"), out
    argv = words(capsys, "openmpi", "-np", "2", "--ssh-port", "2222", "--ssh-identity-file", "/k/id")
    assert has_run(argv, "-mca", "plm_rsh_args", "-p 2222 -i /k/id"), argv


def test_environment_travels_whole(capsys, monkeypatch):
    monkeypatch.setenv("RINGTRAIN_TEST_CARRIED", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "7")  # an enclosing job's, not for the new one
    assert "-genvall" in words(capsys, "hydra", "-np", "2")
    argv = words(capsys, "openmpi", "-np", "2")
    assert has_run(argv, "-x", "RINGTRAIN_TEST_CARRIED") and "OMPI_COMM_WORLD_RANK" not in argv, argv


def test_open_mpi_gets_horovodruns_default_binding_and_timestamps(capsys):
    assert has_run(words(capsys, "openmpi", "-np", "2"), "-bind-to", "none", "-map-by", "slot")
    assert "--timestamp-output" in words(capsys, "openmpi", "-np", "2", "--prefix-output-with-timestamp")


@pytest.mark.parametrize("flavour", ["hydra", "openmpi"])
def test_flags_without_effect_are_accepted_and_change_nothing(capsys, flavour):
    plain = words(capsys, flavour, "-np", "2")
    assert words(capsys, flavour, "-np", "2", "--disable-cache", "--start-timeout", "60", "--mpi",
                 "--stall-check") == plain


@pytest.mark.parametrize("flags, flavour, says", [
    (["-H", "h1:2"], "hydra", "-np/--num-proc is required"),
    (["-np", "0"], "hydra", "-np 0"),
    (["-np", "5", "-H", "h1:2,h2:2"], "openmpi", "-np 5 is more than the 4 slots"),
    (["-np", "2", "-H", "h1:x"], "hydra", "is not host:slots"),
    (["-np", "2", "--network-interfaces", "eth0,eth1"], "hydra", "one interface"),
    (["-np", "2", "--prefix-output-with-timestamp"], "hydra", "cannot stamp"),
    (["-np", "2", "--stall-check-warning-time-seconds", "0"], "openmpi", "must be at least 1"),
])
def test_unusable_options_exit_2_with_one_line(capsys, flags, flavour, says):
    code, out, err = printed(capsys, flavour, *flags)
    assert code == 2 and out == "" and says in err and len(err.splitlines()) == 1, err


def test_a_bad_hostfile_line_is_named(capsys, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("h1 slots=2\nh2 slots two\n")
    code, _, err = printed(capsys, "hydra", "-np", "2", "--hostfile", str(hostfile))
    assert code == 2 and "line 2" in err and "'h2 slots two'" in err, err


def test_no_command_exits_2(capsys):
    code, _, err = printed(capsys, "hydra", "-np", "2", command=())
    assert code == 2 and "no command to run" in err, err


@pytest.mark.parametrize("flags, nargs, reason", run.REFUSED, ids=[f[0] for f, _, _ in run.REFUSED])
def test_each_unsupported_flag_is_refused_with_one_line(capsys, flags, nargs, reason):
    for flag in flags:
        code, out, err = printed(capsys, "hydra", "-np", "2", flag, *["7"] * nargs)
        assert code == 2 and out == "" and err == f"{run.PROG}: error: {flag}: not supported: {reason}", err


def test_every_refused_flag_of_a_command_is_named(capsys):
    code, _, err = printed(capsys, "hydra", "-np", "2", "--gloo", "--min-np", "2", "--timeline-filename", "t.json")
    assert code == 2 and [line.split(": ")[2] for line in err.splitlines()] == ["--gloo", "--min-np",
                                                                              "--timeline-filename"], err


def test_unknown_flags_exit_2_as_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        run.main(["-np", "2", "--no-such-flag", "python", "t.py"])
    assert e.value.code == 2 and "--no-such-flag" in capsys.readouterr().err


def test_check_build_says_mpi_yes_gloo_and_nccl_no(capsys):
    assert run.main(["--check-build"]) == 0
    out = capsys.readouterr().out
    assert "[X] MPI" in out and "[ ] Gloo" in out and "[ ] NCCL" in out and "[X] PyTorch" in out, out


def test_the_flavour_is_read_from_mpiexec_version(tmp_path):
    fake = tmp_path / "mpirun"
    fake.write_text("#!/bin/sh\necho 'mpirun (Open MPI) 4.1.5'\n")
    fake.chmod(0o755)
    assert detect_flavour(str(fake)) == "openmpi"
    fake.write_text("#!/bin/sh\necho 'HYDRA build details:'\n")
    assert detect_flavour(str(fake)) == "hydra"
    fake.write_text("#!/bin/sh\necho 'some other launcher 1.0'\n")
    with pytest.raises(ValueError, match="some other launcher"):
        detect_flavour(str(fake))


def _launch(*flags, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "ringtrain.horovod.run", *flags, sys.executable, SCRIPT],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_a_real_launch_at_2_ranks_on_localhost():
    done = _launch("-np", "2", "-H", "localhost:2", "--verbose", "--stall-check-warning-time-seconds", "7")
    hydra = detect_flavour(mpiexec_path()) == "hydra"
    assert done.returncode == 0, done.stderr
    for r in range(2):  # each rank's line, tagged with its rank (hydra's -l, Open MPI's --tag-output)
        tag = f"[{r}] " if hydra else f"[1,{r}]<stdout>:"
        assert f"\n{tag}rank {r} of 2, local rank {r} of 2, stall warning 7" in "\n" + done.stdout, done.stdout
    assert "-np" in done.stderr or "-n" in done.stderr, done.stderr  # --verbose printed the command


def test_output_filename_collects_each_ranks_output(tmp_path):
    done = _launch("-np", "2", "--output-filename", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    text = "".join(p.read_text() for p in sorted((tmp_path / "out").rglob("*")) if p.is_file())
    assert "rank 0 of 2" in text and "rank 1 of 2" in text, text
