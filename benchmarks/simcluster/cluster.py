"""A simulated multi-host cluster on one machine: network namespaces behind a shaped switch.

    python benchmarks/simcluster/cluster.py --hosts 2 --rate 1gbit -- python -m ringtrain bench allreduce ...

Each "host" is a network namespace with one interface (10.77.0.K/24, a subnet
that exists only inside these namespaces), linked by a veth pair to a bridge in
a "switch" namespace. Both ends of every link get a tc token bucket (tbf) at
``--rate``, so each link is limited in both directions, like a switch port.
mpiexec runs in the first host and starts ``--ranks-per-host`` ranks per host
through rsh.sh; MPICH is forced onto TCP between hosts (its shared-memory
path would otherwise bypass the links) and, with several ranks per host, uses
shared memory inside one, which is how a node of many ranks looks. After the run, the interfaces' byte counters must
show that the data crossed the links, or the run fails. Everything created is
recorded and deleted by name at the end. Needs root.
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from ringtrain.fault.supervise import mpiexec_path  # noqa: E402
SUBNET = "10.77.0"


def sh(*cmd, ns=None, check=True):
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.run(full, check=check, capture_output=True, text=True)


class Cluster:
    """Namespaces ``<tag>-h0 .. h{n-1}`` and ``<tag>-sw``; ``close()`` deletes exactly those."""

    def __init__(self, hosts: int, rate: str, tag: str | None = None, ranks_per_host: int = 1):
        if hosts < 1 or ranks_per_host < 1:
            raise ValueError(f"--hosts and --ranks-per-host must be >= 1, got {hosts} and {ranks_per_host}")
        self.tag = tag or f"rt{os.getpid()}"
        self.rate, self.ranks_per_host, self.created = rate, ranks_per_host, []
        self.hosts = [f"{self.tag}-h{k}" for k in range(hosts)]
        self.addresses = [f"{SUBNET}.{k + 1}" for k in range(hosts)]
        self.switch = f"{self.tag}-sw"
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _netns(self, name):
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)

    def _shape(self, ns, dev):
        # The bucket must hold at least one 64 KiB offload frame, and ~250 us of
        # line rate at high rates, or tbf splits frames and two-way traffic collapses.
        sh("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", self.rate, "burst", "256kb",
           "latency", "50ms", ns=ns)

    def _build(self):
        self._netns(self.switch)
        sh("ip", "link", "add", "br0", "type", "bridge", "stp_state", "0", ns=self.switch)
        sh("ip", "link", "set", "br0", "up", ns=self.switch)
        for k, (host, address) in enumerate(zip(self.hosts, self.addresses)):
            self._netns(host)
            port = f"p{k}"
            sh("ip", "link", "add", "eth0", "netns", host, "type", "veth", "peer", "name", port,
               "netns", self.switch)
            sh("ip", "link", "set", port, "master", "br0", ns=self.switch)
            sh("ip", "link", "set", port, "up", ns=self.switch)
            sh("ip", "addr", "add", f"{address}/24", "dev", "eth0", ns=host)
            sh("ip", "link", "set", "eth0", "up", ns=host)
            self._shape(host, "eth0")
            self._shape(self.switch, port)

    def tx_bytes(self) -> list[int]:
        """Bytes each host has sent on its link."""
        return [int(open_stat(h, "tx_bytes")) for h in self.hosts]

    def close(self):
        for name in reversed(self.created):
            sh("ip", "netns", "delete", name, check=False)
        self.created = []


def open_stat(ns, field):
    return sh("cat", f"/sys/class/net/eth0/statistics/{field}", ns=ns).stdout.strip()


def run(cluster: Cluster, command: list[str], timeout: float, env_extra=None) -> subprocess.CompletedProcess:
    """Run ``command`` with ``cluster.ranks_per_host`` MPI ranks per host; returns the completed mpiexec."""
    with tempfile.TemporaryDirectory() as tmp:
        mapping = os.path.join(tmp, "hosts.map")
        hostfile = os.path.join(tmp, "hosts")
        with open(mapping, "w") as f:
            f.writelines(f"{a} {h}\n" for a, h in zip(cluster.addresses, cluster.hosts))
        per_host = cluster.ranks_per_host
        with open(hostfile, "w") as f:
            f.writelines(f"{a}:{per_host}\n" for a in cluster.addresses)
        mpiexec = mpiexec_path()
        ranks = len(cluster.hosts) * per_host
        # The "hosts" share this machine's cores: MPI sees few ranks per node, so
        # without this each rank would start a compute thread per core.
        threads = str(max(1, len(os.sched_getaffinity(0)) // ranks))
        env = dict(os.environ, OMP_NUM_THREADS=threads, RINGTRAIN_SIMCLUSTER_MAP=mapping,
                   GLOO_SOCKET_IFNAME="eth0", MPIR_CVAR_CH4_NETMOD="ofi",
                   FI_PROVIDER="tcp",
                   FI_TCP_IFACE="eth0", **(env_extra or {}))
        cmd = ["ip", "netns", "exec", cluster.hosts[0], mpiexec, "-f", hostfile, "-n", str(ranks),
               "-ppn", str(per_host), "-iface", "eth0", "-launcher", "rsh", "-launcher-exec", os.path.join(HERE, "rsh.sh"),
               "-genvall", *command]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def run_counted(hosts: int, rate: str, command: list[str], timeout: float, ranks_per_host: int = 1):
    """Build a cluster, run ``command`` on it, delete it; returns (completed mpiexec, bytes each host sent)."""
    cluster = Cluster(hosts, rate, ranks_per_host=ranks_per_host)
    try:
        before = cluster.tx_bytes()
        done = run(cluster, command, timeout)
        return done, [b - a for a, b in zip(before, cluster.tx_bytes())]
    finally:
        cluster.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--ranks-per-host", type=int, default=1,
                   help="MPI ranks in each host (shared memory between them, the link to the others)")
    p.add_argument("--rate", default="1gbit", help="tc rate of every link, e.g. 100mbit, 1gbit, 10gbit")
    p.add_argument("--min-bytes", type=int, default=0,
                   help="fail unless every host sent at least this many bytes over its link")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if os.geteuid() != 0:
        sys.exit("cluster.py: network namespaces need root")
    # SIGTERM (timeout, scancel) unwinds like Ctrl-C, so the namespaces are deleted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    done, sent = run_counted(args.hosts, args.rate, command, args.timeout, args.ranks_per_host)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    print(f"# simulated cluster: {args.hosts} hosts x {args.ranks_per_host} ranks at {args.rate}; bytes sent per "
          f"host over the links: {sent}")
    if done.returncode:
        sys.exit(done.returncode)
    if min(sent) < args.min_bytes:
        sys.exit(f"cluster.py: a host sent only {min(sent)} bytes over its link, fewer than --min-bytes "
                 f"{args.min_bytes}: the data did not cross the shaped links")


if __name__ == "__main__":
    main()
