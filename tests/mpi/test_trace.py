"""The timeline: its format, the clock alignment, bucket spans under backward, and the summary against metrics.jsonl."""
import json
import os

import pytest
from mpi4py import MPI

from ringtrain.trace.summary import summarize
from ringtrain.train import TrainConfig, train
from tests.helpers import all_ranks_agree
from tests.mpi.test_training import TINY, corpus  # noqa: F401  (the fixture)

WORLD = MPI.COMM_WORLD
STEPS = 4


@pytest.fixture
def traced(corpus, mpi_tmp_path):  # noqa: F811
    """A short traced run with small buckets: (the merged trace, rank 0's metrics rows)."""
    where = str(mpi_tmp_path)
    path = os.path.join(where, "trace.json")
    cfg = TrainConfig(**{**TINY, "width": 64, "layers": 2}, data=corpus, steps=STEPS, batch_size=4,
                      bucket_cap_mb=0.01, out_dir=os.path.join(where, "out"), trace=path)
    train(cfg)
    with open(path) as f:
        trace = json.load(f)
    with open(os.path.join(where, "out", "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f if '"exposed_comm_seconds"' in line]
    return trace, metrics


@pytest.mark.mpi
def test_the_trace_is_chrome_trace_event_format_with_every_rank(traced):
    trace, _ = traced
    events, n = trace["traceEvents"], WORLD.Get_size()
    ok = all(e["ph"] in ("X", "i", "M") and isinstance(e["pid"], int) for e in events)
    ok &= all(isinstance(e["ts"], float) and e.get("dur", 0) >= 0 for e in events if e["ph"] != "M")
    ok &= {e["pid"] for e in events} == set(range(n))
    names = {e["name"] for e in events}
    ok &= {"step", "forward", "backward", "synchronize", "optimizer", "data"} <= names
    if n > 1:  # the averaging runs on the communication thread, a ready instant per bucket before it
        comm = [e for e in events if e["name"].startswith("allreduce bucket")]
        ok &= bool(comm) and all(e["tid"] == "ringtrain-comm" and e["args"]["bytes"] > 0 for e in comm)
        ok &= any(e["ph"] == "i" and e["name"].endswith("ready") for e in events)
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_clocks_are_aligned_within_their_recorded_error(traced):
    """All ranks here share one monotonic clock: the measured offset must be 0 within its error bound."""
    clocks = traced[0]["metadata"]["clock_offsets_to_rank0"]
    ok = sorted(clocks) == sorted(str(r) for r in range(WORLD.Get_size()))
    ok &= all(c["error_us"] >= 0 and abs(c["offset_us"]) <= c["error_us"] + 50 for c in clocks.values())
    assert all_ranks_agree(ok), clocks


@pytest.mark.mpi(min_size=2)
def test_bucket_spans_run_under_backward(traced):
    events = traced[0]["traceEvents"]
    backward = {(e["pid"], e["args"]["step"]): e for e in events if e["name"] == "backward"}
    steps = {(e["pid"], e["args"]["step"]): e for e in events if e["name"] == "step"}
    under = 0
    for e in events:
        if e["name"].startswith("allreduce bucket"):
            for (pid, step), s in steps.items():
                b = backward[(pid, step)]
                if pid == e["pid"] and s["ts"] <= e["ts"] < b["ts"] + b["dur"]:
                    under += 1
    assert all_ranks_agree(under > 0), under


@pytest.mark.mpi
def test_the_summary_agrees_with_metrics(traced):
    trace, metrics = traced
    rows = summarize(trace["traceEvents"])
    ok = [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for row, m in zip(rows, metrics):
        ours, theirs = row["ranks"]["0"]["exposed"], 1e3 * m["exposed_comm_seconds"]
        ok &= abs(ours - theirs) <= 0.1 * theirs + 0.5
        ok &= 0 < row["compute_ms"] <= row["step_ms"]
        ok &= (m["wire_bytes"] > 0) == (WORLD.Get_size() > 1)  # bytes sent averaging, per step
    assert all_ranks_agree(ok), [(r["ranks"]["0"]["exposed"], 1e3 * m["exposed_comm_seconds"])
                                 for r, m in zip(rows, metrics)]
