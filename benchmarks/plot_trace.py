"""Draw a ``train --trace`` timeline as a PNG: one row per rank and thread, one bar per span.

    python benchmarks/plot_trace.py trace.json timeline.png [--steps 3:5] [--title TEXT]

Compute (forward, backward, optimizer) and the main thread's wait for the
last buckets (synchronize) on each rank's main row; each bucket's averaging on
its communication-thread row. Averaging drawn under backward is communication
hidden behind compute. ``--steps A:B`` draws only steps A to B.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ringtrain.trace.summary import summarize  # noqa: E402

COLOURS = {"forward": "#4C72B0", "backward": "#55A868", "optimizer": "#8172B2", "synchronize": "#C44E52",
           "data": "#CCB974", "communication": "#DD8452", "codec": "#937860"}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace")
    p.add_argument("png")
    p.add_argument("--steps", help="first:last step to draw (default: all)")
    p.add_argument("--title", default="")
    args = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(args.trace) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    steps = {(e["pid"], e["args"]["step"]): e for e in events if e["name"] == "step"}
    first, last = (int(v) for v in args.steps.split(":")) if args.steps else (1, max(s for _, s in steps))
    lo = min(e["ts"] for (_, s), e in steps.items() if s == first)
    hi = max(e["ts"] + e["dur"] for (_, s), e in steps.items() if s == last)
    rows = sorted({(e["pid"], e["tid"] != "main") for e in events})
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(rows) + 1.4))
    for y, (pid, comm_row) in enumerate(rows):
        for e in events:
            if e["pid"] != pid or (e["tid"] != "main") != comm_row or e["ts"] + e["dur"] < lo or e["ts"] > hi:
                continue
            key = e["name"] if e["name"] in COLOURS else e.get("cat")
            if key not in COLOURS:
                continue
            ax.barh(y, e["dur"] / 1e3, left=(e["ts"] - lo) / 1e3, height=0.7 if key != "codec" else 0.35,
                    color=COLOURS[key], edgecolor="white", linewidth=0.3)
    ax.set_yticks(range(len(rows)), [f"rank {pid} {'comm' if c else 'main'}" for pid, c in rows])
    ax.invert_yaxis()
    ax.set_xlabel("ms")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    ax.legend(handles, list(COLOURS), ncol=len(COLOURS), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28))
    rows_summary = [r for r in summarize(events) if first <= r["step"] <= last]
    overlap = [r["overlap"] for r in rows_summary if r["overlap"] is not None]
    ax.set_title(args.title + (f" (overlap {100 * sum(overlap) / len(overlap):.0f}%)" if overlap else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)


if __name__ == "__main__":
    main()
