"""The bandwidth-tuning sweeps on the simulated cluster, then the report (tables, plots, cost model).

    python benchmarks/simcluster/sweep.py --quick     # 2-3 minutes
    python benchmarks/simcluster/sweep.py --full      # about 80 minutes

Each job builds a fresh cluster (``--hosts`` namespaces, every link shaped to
``--rate``), runs one ``python -m ringtrain bench ...`` with one rank per host,
checks that every host sent at least MIN_LINK_BYTES over its link (or the job
fails: the data took a path around the shaped links), and writes its JSON into
the output directory. A job whose JSON is already there is skipped, so an
interrupted sweep continues where it stopped; ``--force`` reruns everything.
Afterwards ``report.py`` turns the directory into tables, PNG plots, the fitted
cost model and the planner's validation. Needs root.
"""
import argparse
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cluster import run_counted  # noqa: E402

MIN_LINK_BYTES = 1 << 20
CONVERGENCE_COMPRESSORS = "fp16,ef+int8,powersgd:rank=4,ef+topk:ratio=0.01,onebit,auto"
LONG_COMPRESSORS = "powersgd:rank=4,dgc:ratio=0.01,momentum=0.9,warmup=200,masking=0"
ALGORITHMS = "ring,recursive_doubling,ps,auto"

# Jobs: (kind, hosts, rate, bench arguments[, tag for a second job of the same
# kind, hosts and rate]). ``hosts`` may be (hosts, ranks per host) for a two-level
# cluster, whose allreduce jobs add the node-aware ring. The allreduce peer, MPI_Allreduce, is in every
# allreduce job; the uncompressed ring and MPI in every compression job; DDP
# and DDP+PowerSGD in every convergence job.

# CI's check that the harness, the benches, the fit and the report still work together.
SMOKE = [
    # From 4 MiB: the links' 256 KiB token-bucket burst flatters 1 MiB enough that a two-point fit
    # could put the link above 100% efficiency.
    ("allreduce", 2, "1gbit", ["--min-bytes", "4M", "--max-bytes", "16M", "--step-factor", "4", "--repeat", "1",
                               "--iter-bytes", "16M", "--min-iters", "2"]),
    ("allreduce", (2, 2), "1gbit", ["--min-bytes", "4M", "--max-bytes", "4M", "--repeat", "1",
                                    "--iter-bytes", "4M", "--min-iters", "2"]),
    ("compression", 2, "1gbit", ["--sizes", "1M", "--compressors", "fp16,powersgd:rank=4", "--steps", "2",
                                 "--repeat", "1"]),
    ("convergence", 2, "1gbit", ["--steps", "6", "--skip", "2", "--width", "64", "--layers", "1", "--context", "32",
                                 "--batch-size", "2", "--bucket-sizes", "25", "--compressors", "fp16,auto",
                                 "--ddp", "plain"]),
]
QUICK = [
    ("allreduce", 2, "1gbit", ["--min-bytes", "256K", "--max-bytes", "16M", "--step-factor", "4", "--repeat", "3",
                               "--iter-bytes", "16M", "--min-iters", "2"]),
    ("allreduce", 4, "1gbit", ["--min-bytes", "256K", "--max-bytes", "16M", "--step-factor", "4", "--repeat", "3",
                               "--iter-bytes", "16M", "--min-iters", "2"]),
    ("compression", 4, "1gbit", ["--sizes", "4M", "--compressors", "fp16,int8,topk:ratio=0.01,powersgd:rank=4",
                                 "--steps", "3", "--repeat", "3"]),
    ("convergence", 4, "1gbit", ["--steps", "40", "--batch-size", "1", "--bucket-sizes", "1,25",
                                 "--compressors", "fp16,powersgd:rank=4,auto", "--ddp", "plain,powersgd:rank=4"]),
]
FULL = [
    ("allreduce", 2, "100mbit", ["--min-bytes", "4K", "--max-bytes", "4M", "--step-factor", "4", "--repeat", "3",
                                 "--iter-bytes", "8M", "--min-iters", "2"]),
    ("allreduce", 4, "100mbit", ["--min-bytes", "4K", "--max-bytes", "4M", "--step-factor", "4", "--repeat", "3",
                                 "--iter-bytes", "8M", "--min-iters", "2"]),
    ("allreduce", 2, "1gbit", ["--min-bytes", "4K", "--max-bytes", "64M", "--step-factor", "4", "--repeat", "5",
                               "--iter-bytes", "64M", "--min-iters", "2"]),
    ("allreduce", 4, "1gbit", ["--min-bytes", "4K", "--max-bytes", "64M", "--step-factor", "4", "--repeat", "5",
                               "--iter-bytes", "64M", "--min-iters", "2"]),
    ("allreduce", 2, "10gbit", ["--min-bytes", "4K", "--max-bytes", "64M", "--step-factor", "4", "--repeat", "5"]),
    ("compression", 4, "100mbit", ["--sizes", "4M", "--steps", "3", "--repeat", "3"]),
    ("compression", 4, "1gbit", ["--sizes", "4M,16M", "--steps", "5", "--repeat", "5"]),
    ("compression", 2, "10gbit", ["--sizes", "4M,16M", "--steps", "5", "--repeat", "5"]),
    ("convergence", 4, "100mbit", ["--steps", "100", "--batch-size", "1", "--bucket-sizes", "1,5,25", "--repeat", "2",
                                   "--compressors", CONVERGENCE_COMPRESSORS]),
    ("convergence", 4, "1gbit", ["--steps", "150", "--batch-size", "1", "--bucket-sizes", "1,5,25", "--repeat", "2",
                                 "--compressors", CONVERGENCE_COMPRESSORS]),
    # The same model on a quarter of the context: a quarter of the compute, the same
    # gradients, so the link is the limit as it is for a large model on a cluster.
    ("convergence", 4, "1gbit", ["--steps", "150", "--batch-size", "1", "--context", "32", "--bucket-sizes", "1,5,25",
                                 "--repeat", "2", "--compressors", CONVERGENCE_COMPRESSORS], "ctx32"),
    ("convergence", 2, "10gbit", ["--steps", "150", "--batch-size", "1", "--bucket-sizes", "1,5,25", "--repeat", "2",
                                  "--compressors", CONVERGENCE_COMPRESSORS]),
    # 1000 steps, so that 1-bit Adam's and DGC's warm-ups (100 steps of AdamW, then DGC's
    # density falling over 200) have room: both against uncompressed AdamW, PowerSGD and
    # DDP's PowerSGD hook in the same run.
    *[("convergence", 4, rate, ["--steps", "1000", "--skip", "20", "--batch-size", "2", "--bucket-sizes", "25",
                                "--compressors", LONG_COMPRESSORS, "--onebit-adam", "100",
                                "--ddp", "powersgd:rank=4"], "long") for rate in ("100mbit", "1gbit")],
    # Two levels: the node-aware ring against the flat one, and compression across nodes
    # only (auto) against compression on every hop (off).
    ("allreduce", (2, 2), "1gbit", ["--min-bytes", "4K", "--max-bytes", "64M", "--step-factor", "4", "--repeat", "5",
                                    "--iter-bytes", "64M", "--min-iters", "2"]),
    ("convergence", (2, 2), "1gbit", ["--steps", "150", "--bucket-sizes", "25", "--repeat", "2", "--node-aware",
                                      "auto,off", "--compressors", "ef+int8,powersgd:rank=4", "--ddp", "plain"]),
]


def job_name(kind, hosts, rate, tag="") -> str:
    hosts, per_host = hosts if isinstance(hosts, tuple) else (hosts, 1)
    shape = f"{hosts}x{per_host}" if per_host > 1 else f"{hosts}"
    return f"{kind}_n{shape}_{rate}" + (f"_{tag}" if tag else "")


def run_job(kind, hosts, rate, bench_args, out_dir, timeout, tag="") -> None:
    name = job_name(kind, hosts, rate, tag)
    path = os.path.join(out_dir, name + ".json")
    # The link is recorded by the benchmark itself (ringtrain.results), for the fit and the report.
    command = [sys.executable, "-m", "ringtrain", "bench", kind, *bench_args, "--json", path, "--link", rate]
    hosts, per_host = hosts if isinstance(hosts, tuple) else (hosts, 1)
    if kind == "allreduce":
        # Each host's eth0 carries only the job: its counter is the job's link bytes.
        command += ["--algorithms", ALGORITHMS + (",hierarchical" if per_host > 1 else ""), "--count-iface", "eth0"]
    if kind == "convergence":
        command += ["--out-dir", os.path.join(out_dir, "runs", name)]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    t0 = time.monotonic()
    done, sent = run_counted(hosts, rate, command, timeout, per_host)
    with open(os.path.join(out_dir, name + ".log"), "w") as f:
        f.write(done.stdout + done.stderr)
    if done.returncode or min(sent) < MIN_LINK_BYTES:
        if os.path.exists(path):
            os.replace(path, path + ".rejected")
        why = (f"exit code {done.returncode}" if done.returncode else
               f"a host sent only {min(sent)} bytes over its link: the data did not cross the shaped links")
        raise SystemExit(f"sweep: {name} failed ({why}); its output is in {name}.log\n{done.stderr[-2000:]}")
    table = [line for line in done.stdout.splitlines() if not line.startswith(("step ", "validation", "done:"))]
    print("\n".join(table[-40:]))
    print(f"== {name}: {time.monotonic() - t0:.0f} s; bytes sent per host over the links: {sent}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--quick", action="store_true", help="2 and 4 hosts at 1 Gbit/s, few sizes (2-3 min)")
    size.add_argument("--full", action="store_true", help="100 Mbit/s to 10 Gbit/s, every variant (about 80 min)")
    size.add_argument("--smoke", action="store_true", help="2 hosts, 2 sizes, a tiny model: CI's check (2 min)")
    p.add_argument("--out", help="output directory (default benchmarks/results/simcluster-quick or -full)")
    p.add_argument("--only", help="run only the jobs whose name contains this, e.g. convergence_n4")
    p.add_argument("--force", action="store_true", help="rerun jobs whose JSON is already there")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per job before it is killed")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("sweep.py: network namespaces need root")
    # SIGTERM unwinds like Ctrl-C, so the running job's namespaces are deleted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    flavour = "quick" if args.quick else "smoke" if args.smoke else "full"
    jobs = {"quick": QUICK, "smoke": SMOKE, "full": FULL}[flavour]
    out_dir = args.out or os.path.join(os.path.dirname(HERE), "results", f"simcluster-{flavour}")
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.monotonic()
    for kind, hosts, rate, bench_args, *tag in jobs:
        name = job_name(kind, hosts, rate, *tag)
        if args.only and args.only not in name:
            continue
        if os.path.exists(os.path.join(out_dir, name + ".json")) and not args.force:
            print(f"== {name}: already measured, skipped (--force reruns it)")
            continue
        run_job(kind, hosts, rate, bench_args, out_dir, args.timeout, *tag)
    print(f"== sweep done in {time.monotonic() - t0:.0f} s; report:", flush=True)
    report = subprocess.run([sys.executable, os.path.join(HERE, "report.py"), out_dir])
    sys.exit(report.returncode)


if __name__ == "__main__":
    main()
