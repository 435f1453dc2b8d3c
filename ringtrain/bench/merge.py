"""``python -m ringtrain bench merge A.json B.json ... --json all.json --plot all.png``.

Merges ``bench allreduce`` results (one file per world size, compressor or
link, as a Slurm array job writes them) into one table, one JSON file and one
plot of busbw against message size. Runs without MPI ranks: plain Python.
"""
import argparse
import sys
import time

from .._version import __version__
from ..fault.errors import UsageError
from ..results import FORMAT, load_result, write_result
from .sizes import format_bytes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="bench allreduce --json files")
    p.add_argument("--json", metavar="FILE", help="write the merged rows")
    p.add_argument("--plot", metavar="PNG", help="plot busbw against size (needs matplotlib)")


def main(args) -> int:
    rows, sources = [], []
    for path in args.inputs:
        try:
            data = load_result(path)
        except (OSError, ValueError) as e:
            raise UsageError(f"bench merge: {e}") from None
        if data.get("benchmark") != "allreduce":
            raise UsageError(f"bench merge: {path} is a '{data.get('benchmark')}' result — give 'bench allreduce' "
                             "results")
        n = data["meta"]["world_size"]
        rows += [{**row, "world_size": n, "source": path} for row in data["rows"]]
        sources.append(data["meta"])
    series = sorted({(r["world_size"], r["algorithm"]) for r in rows})
    sizes = sorted({r["size"] for r in rows})
    by = {(r["world_size"], r["algorithm"], r["size"]): r for r in rows}
    names = [f"n={n} {alg}" for n, alg in series]
    print("busbw in GB/s")
    print(f"{'size':>8} " + " ".join(f"{name:>24}" for name in names))
    for size in sizes:
        cells = [by.get((n, alg, size)) for n, alg in series]
        print(f"{format_bytes(size):>8} " + " ".join(f"{c['busbw']:>24.2f}" if c else f"{'-':>24}" for c in cells))
    if args.json:
        # No one run measured this: the meta block says what was merged, each input's own block inside.
        meta = {"format": FORMAT, "ringtrain": __version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv), "sources": sources}
        write_result(args.json, "allreduce-merged", meta, inputs=args.inputs, rows=rows)
        print(f"# wrote {args.json}")
    if args.plot:
        _plot(rows, series, args.plot)
        print(f"# wrote {args.plot}")
    return 0


def _plot(rows, series, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("bench merge: --plot needs matplotlib (pip install 'ringtrain[bench]')")
    fig, ax = plt.subplots(figsize=(8, 5))
    for n, alg in series:
        points = sorted((r["size"], r["busbw"]) for r in rows if r["world_size"] == n and r["algorithm"] == alg)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=f"n={n} {alg}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("busbw (GB/s)")
    ax.set_title("allreduce bus bandwidth")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
