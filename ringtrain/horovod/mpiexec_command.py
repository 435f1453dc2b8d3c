"""The mpiexec command that horovodrun's options ask for, in the dialect of the MPI that runs it.

Two launchers take different flags for the same things: MPICH's (and Intel
MPI's) hydra, and Open MPI's. ``detect_flavour`` asks the mpiexec itself
(``--version``); ``mpiexec_command`` writes the command for a ``Launch``:

=====================  ==================================  =====================================
horovodrun             hydra                               Open MPI
=====================  ==================================  =====================================
-np N                  -n N                                -np N
-H h1:2,h2:2           -hosts h1:2,h2:2                    -H h1:2,h2:2
--hostfile F           -hosts from F (``h slots=N`` lines) --hostfile F (the same format)
-p / -i (ssh)          HYDRA_LAUNCHER_EXTRA_ARGS           -mca plm_rsh_args "-p P -i F"
--network-interface    -iface NIC (one)                    -mca btl/oob_tcp_if_include NICS
--output-filename D    -outfile/-errfile-pattern D/rank.%r --output-filename D
--prefix-output-...    (refused: hydra has no timestamps)  --timestamp-output
the environment        -genvall                            -x NAME for each variable
a variable set by a flag -genv NAME VALUE                  -x NAME=VALUE
output tagging         -l                                  --tag-output
=====================  ==================================  =====================================

>>> launch = Launch(np=4, hosts=[("h1", 2), ("h2", 2)], command=["python", "train.py"])
>>> mpiexec_command(launch, "hydra", "mpiexec", env={}).argv
['mpiexec', '-l', '-n', '4', '-hosts', 'h1:2,h2:2', '-genvall', 'python', 'train.py']
"""
import dataclasses
import re
import shlex
import subprocess

FLAVOURS = ("hydra", "openmpi")

# Not passed with -x: the shell's own bookkeeping, and an enclosing MPI job's variables (each launch sets its own,
# and the ranks would read the outer job's). Exported bash functions fail _NAME: they are no names to MPI.
_NOT_EXPORTED = {"_", "PWD", "OLDPWD", "SHLVL", "HOSTNAME", "PS1", "TERM"}
_LAUNCHERS_OWN = ("OMPI_", "PMIX_", "PMI_", "HYDRA_", "MPIEXEC_")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class LaunchError(ValueError):
    """Options that cannot become an mpiexec command: the message is one line for the user."""


@dataclasses.dataclass(kw_only=True)
class Launch:
    """What horovodrun's options ask for, before any launcher's dialect."""

    np: int
    """Number of processes (-np)."""
    command: list[str]
    """The program and its arguments, run on every rank."""
    hosts: list[tuple[str, int]] | None = None
    """(host, slots) from -H or --hostfile; None runs every rank on this machine."""
    hostfile: str | None = None
    """The --hostfile path, which Open MPI reads itself (hydra gets its hosts as -hosts)."""
    ssh_port: int | None = None
    """-p: the ssh port on every host."""
    ssh_identity_file: str | None = None
    """-i: the ssh private key."""
    nics: list[str] = dataclasses.field(default_factory=list)
    """--network-interface(s): the interfaces MPI may use."""
    output_filename: str | None = None
    """--output-filename: a directory for each rank's stdout and stderr."""
    timestamp_output: bool = False
    """--prefix-output-with-timestamp."""
    binding_args: str | None = None
    """--binding-args: replaces the default binding (Open MPI: -bind-to none -map-by slot, as horovodrun)."""
    mpi_args: str | None = None
    """--mpi-args: passed to mpiexec as they are."""
    rank_env: dict[str, str] = dataclasses.field(default_factory=dict)
    """Variables the flags set for the ranks (``--stall-check-warning-time-seconds``), beside the environment."""


@dataclasses.dataclass
class Command:
    """An mpiexec command line and the variables it needs in mpiexec's own environment."""

    argv: list[str]
    env: dict[str, str]

    def __str__(self) -> str:
        """As a shell would take it: ``VAR=value mpiexec ...``, quoted."""
        return " ".join([f"{k}={shlex.quote(v)}" for k, v in self.env.items()] + [shlex.quote(a) for a in self.argv])


def detect_flavour(mpiexec: str) -> str:
    """"hydra" or "openmpi", from ``mpiexec --version``; LaunchError for anything else.

    >>> detect_flavour("/bin/false")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ringtrain.horovod.mpiexec_command.LaunchError: ...
    """
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
        text = out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LaunchError(f"could not run {mpiexec} --version ({e}); name the MPI with --mpi-flavour") from e
    if "Open MPI" in text or "OpenRTE" in text or "Open RTE" in text or "PRRTE" in text:
        return "openmpi"
    if "HYDRA" in text or "MPICH" in text or "Intel(R) MPI" in text:
        return "hydra"
    first = text.strip().splitlines()[0] if text.strip() else "nothing"
    raise LaunchError(f"{mpiexec} --version says {first!r}, neither MPICH's hydra nor Open MPI's; "
                      f"name it with --mpi-flavour {{{','.join(FLAVOURS)}}}")


def parse_hosts(text: str) -> list[tuple[str, int]]:
    """-H's ``host:slots,host:slots`` (a host without ``:slots`` has one slot, as Open MPI's -H).

    >>> parse_hosts("h1:2,h2:4,h3")
    [('h1', 2), ('h2', 4), ('h3', 1)]
    """
    hosts = []
    for item in text.split(","):
        name, colon, slots = item.strip().rpartition(":")
        if not colon:
            name, slots = slots, "1"
        if not name or not slots.isdigit() or int(slots) < 1:
            raise LaunchError(f"-H/--hosts {text!r}: {item!r} is not host:slots (e.g. host1:2,host2:2)")
        hosts.append((name, int(slots)))
    return hosts


def read_hostfile(path: str) -> list[tuple[str, int]]:
    """A hostfile as horovodrun and Open MPI read it: ``host slots=N`` per line (``host`` alone: 1), # comments."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise LaunchError(f"--hostfile {path}: cannot read it ({e.strerror})") from e
    hosts = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        match = re.fullmatch(r"slots=(\d+)", words[1]) if len(words) == 2 else None
        if len(words) > 2 or (len(words) == 2 and (match is None or int(match[1]) < 1)):
            raise LaunchError(f"--hostfile {path}, line {number}: {line.strip()!r} is not '<host> slots=<N>'")
        hosts.append((words[0], int(match[1]) if match else 1))
    if not hosts:
        raise LaunchError(f"--hostfile {path}: names no host")
    return hosts


def exportable(env: dict[str, str]) -> list[str]:
    """The variables that travel to Open MPI's ranks with -x, in sorted order (hydra passes all: -genvall)."""
    return sorted(k for k in env if _NAME.match(k) and k not in _NOT_EXPORTED and not k.startswith(_LAUNCHERS_OWN))


def mpiexec_command(launch: Launch, flavour: str, mpiexec: str, env: dict[str, str]) -> Command:
    """The command for ``launch`` under ``flavour``'s mpiexec; ``env`` is the environment the ranks should get."""
    if flavour not in FLAVOURS:
        raise LaunchError(f"--mpi-flavour {flavour!r}: use one of {', '.join(FLAVOURS)}")
    if launch.hosts is not None:
        slots = sum(s for _, s in launch.hosts)
        if launch.np > slots:  # Open MPI refuses this itself; hydra would silently oversubscribe
            raise LaunchError(f"-np {launch.np} is more than the {slots} slots the hosts give "
                              f"({','.join(f'{h}:{s}' for h, s in launch.hosts)})")
    ssh = [*(["-p", str(launch.ssh_port)] if launch.ssh_port else []),
           *(["-i", launch.ssh_identity_file] if launch.ssh_identity_file else [])]
    build = _hydra if flavour == "hydra" else _openmpi
    argv, mpiexec_env = build(launch, env, ssh)
    argv = [mpiexec, *argv]
    if launch.mpi_args:
        argv += shlex.split(launch.mpi_args)
    return Command(argv + list(launch.command), mpiexec_env)


def _hydra(launch: Launch, env: dict[str, str], ssh: list[str]) -> tuple[list[str], dict[str, str]]:
    # -l labels each piece of output with its rank, as horovodrun asks hydra to. hydra labels what each write
    # carries: a line written in two pieces (Python's print under PYTHONUNBUFFERED=1) can run into another
    # rank's, as it can without the labels.
    argv, mpiexec_env = ["-l", "-n", str(launch.np)], {}
    if launch.hosts is not None:
        argv += ["-hosts", ",".join(f"{h}:{s}" for h, s in launch.hosts)]
    if ssh:  # hydra's ssh launcher appends these words to each ssh command it runs
        argv += ["-launcher", "ssh"]
        mpiexec_env["HYDRA_LAUNCHER_EXTRA_ARGS"] = " ".join(ssh)
    if len(launch.nics) > 1:
        raise LaunchError(f"--network-interface {','.join(launch.nics)}: MPICH's hydra uses one interface (-iface); "
                          "name one")
    if launch.nics:
        argv += ["-iface", launch.nics[0]]
    if launch.output_filename:
        argv += ["-outfile-pattern", f"{launch.output_filename}/rank.%r.stdout",
                 "-errfile-pattern", f"{launch.output_filename}/rank.%r.stderr"]
    if launch.timestamp_output:
        raise LaunchError("--prefix-output-with-timestamp: MPICH's hydra cannot stamp output lines with the time "
                          "(Open MPI's --timestamp-output can)")
    if launch.binding_args:
        argv += shlex.split(launch.binding_args)
    argv += ["-genvall"]
    for name, value in launch.rank_env.items():
        argv += ["-genv", name, value]
    return argv, mpiexec_env


def _openmpi(launch: Launch, env: dict[str, str], ssh: list[str]) -> tuple[list[str], dict[str, str]]:
    argv = ["--allow-run-as-root", "--tag-output", "-np", str(launch.np)]
    if launch.hostfile is not None:
        argv += ["--hostfile", launch.hostfile]
    elif launch.hosts is not None:
        argv += ["-H", ",".join(f"{h}:{s}" for h, s in launch.hosts)]
    argv += shlex.split(launch.binding_args) if launch.binding_args else ["-bind-to", "none", "-map-by", "slot"]
    if ssh:
        argv += ["-mca", "plm_rsh_args", " ".join(ssh)]
    if launch.nics:  # the ranks' messages (btl) and the runtime's own (oob) alike
        argv += ["-mca", "btl_tcp_if_include", ",".join(launch.nics),
                 "-mca", "oob_tcp_if_include", ",".join(launch.nics)]
    if launch.output_filename:
        argv += ["--output-filename", launch.output_filename]
    if launch.timestamp_output:
        argv += ["--timestamp-output"]
    for name in exportable(env):
        if name not in launch.rank_env:
            argv += ["-x", name]
    for name, value in launch.rank_env.items():
        argv += ["-x", f"{name}={value}"]
    return argv, {}
