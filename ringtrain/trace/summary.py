"""``python -m ringtrain trace summary FILE``: per step, where the time went and how much communication was hidden.

From a merged trace (recorder.py), per step and rank:

- step: the main thread's "step" span; every other span counts in the step
  whose window holds its end;
- compute: its forward, backward and optimizer spans;
- communication: the communication thread's bucket spans that ended within the step;
- exposed: the main thread's "synchronize" span, where it waited for the last
  buckets (what metrics.jsonl calls exposed_comm_seconds);
- overlap: the share of communication that ran while the main thread computed,
  1 - exposed / communication.

Each step's row is its slowest rank's (the one a synchronous step waits for), named.
"""
import argparse
import bisect
import json
from collections import defaultdict

COMPUTE = ("forward", "backward", "optimizer")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a trace written by train --trace")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")


def load_events(path: str) -> list:
    try:
        with open(path) as f:
            data = json.load(f)
        events = data["traceEvents"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a ringtrain trace ({e}) — give the FILE that train --trace wrote") from None
    return events


def summarize(events: list) -> list[dict]:
    """One row per step: the slowest rank's step, compute, communication, exposed and overlap, in ms.

    A span belongs to the step of its rank whose window holds the span's end,
    so the communication thread's spans need no step number. ``ranks`` has every rank's figures.
    """
    spans = [e for e in events if e.get("ph") == "X"]
    windows = defaultdict(list)  # rank -> [(end, start, step)], sorted by end
    for e in spans:
        if e["name"] == "step" and e["tid"] == "main":
            windows[e["pid"]].append((e["ts"] + e["dur"], e["ts"], e["args"]["step"]))
    rows = defaultdict(dict)  # step -> rank -> figures
    for rank, ws in windows.items():
        ws.sort()
        for end, start, step in ws:
            rows[step][rank] = {"step": end - start, "compute": 0.0, "communication": 0.0, "exposed": 0.0}
    for e in spans:
        ws = windows.get(e["pid"])
        if not ws or e["name"] == "step":
            continue
        end = e["ts"] + e["dur"]
        at = bisect.bisect_left(ws, (end,))
        if at == len(ws) or ws[at][1] > end:
            continue  # outside every step: start-up, the first validation
        row = rows[ws[at][2]][e["pid"]]
        if e["tid"] == "main" and e["name"] in COMPUTE:
            row["compute"] += e["dur"]
        elif e["tid"] == "main" and e["name"] == "synchronize":
            row["exposed"] += e["dur"]
        elif e.get("cat") == "communication" and e["tid"] != "main":
            row["communication"] += e["dur"]
    out = []
    for step in sorted(rows):
        rank, row = max(rows[step].items(), key=lambda kv: kv[1]["step"])
        comm = row["communication"]
        out.append({"step": step, "slowest_rank": rank, "step_ms": row["step"] / 1e3,
                    "compute_ms": row["compute"] / 1e3, "communication_ms": comm / 1e3,
                    "exposed_ms": row["exposed"] / 1e3,
                    "overlap": max(0.0, 1 - row["exposed"] / comm) if comm else None,
                    "ranks": {str(r): {k: v / 1e3 for k, v in f.items()} for r, f in sorted(rows[step].items())}})
    return out


class NotATrace(ValueError):
    """The file given is no training trace. Its own type, not fault's UsageError, which sits in a layer
    above tracing: the command line (cli.py) turns it into one line and exit code 2."""


def main(args) -> int:
    try:
        rows = summarize(load_events(args.file))
    except ValueError as e:
        raise NotATrace(str(e)) from None
    if not rows:
        raise NotATrace(f"{args.file} has no training steps — was it written by train --trace?")
    print(f"{'step':>6} {'step_ms':>9} {'compute_ms':>10} {'comm_ms':>9} {'exposed_ms':>10} {'overlap':>8} "
          f"{'slowest':>7}")
    for r in rows:
        overlap = "-" if r["overlap"] is None else f"{100 * r['overlap']:.0f}%"
        print(f"{r['step']:>6} {r['step_ms']:>9.1f} {r['compute_ms']:>10.1f} {r['communication_ms']:>9.1f} "
              f"{r['exposed_ms']:>10.1f} {overlap:>8} {r['slowest_rank']:>7}")
    later = rows[1:] or rows  # the first step pays start-up
    comm, exposed = sum(r["communication_ms"] for r in later), sum(r["exposed_ms"] for r in later)
    print(f"# after the first step: median step {sorted(r['step_ms'] for r in later)[len(later) // 2]:.1f} ms; "
          f"communication {comm:.0f} ms, exposed {exposed:.0f} ms, overlap "
          + (f"{100 * max(0.0, 1 - exposed / comm):.0f}%" if comm else "-"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)
    return 0
