"""trace summary on a hand-made timeline (a closed form), and on files that are not traces."""
import json
import subprocess
import sys

from ringtrain.trace.summary import summarize


def span(name, ts, dur, pid=0, tid="main", cat="compute", **args):
    return {"name": name, "ph": "X", "ts": ts, "dur": dur, "pid": pid, "tid": tid, "cat": cat, "args": args}


def timeline():
    """Two ranks, one step of 100 ms each; rank 1 is slower. Bucket spans overlap backward by a known amount."""
    events = []
    for pid, extra in ((0, 0.0), (1, 10e3)):
        events += [span("step", 0.0, 100e3 + extra, pid, cat="step", step=1),
                   span("forward", 0.0, 30e3, pid, step=1), span("backward", 30e3, 50e3, pid, step=1),
                   span("synchronize", 80e3, 10e3 + extra, pid, cat="communication", step=1),
                   span("optimizer", 90e3 + extra, 10e3, pid, step=1),
                   # 40 ms of averaging on the communication thread, 10 (+extra) of it after backward.
                   span("allreduce bucket 0", 50e3, 20e3, pid, "ringtrain-comm", "communication"),
                   span("allreduce bucket 1", 70e3, 20e3 + extra, pid, "ringtrain-comm", "communication"),
                   span("compress", 71e3, 1e3, pid, "ringtrain-comm", "codec")]
    events.append(span("validation", -50e3, 40e3, 0, cat="eval"))  # before any step: left out
    return events


def test_the_summary_is_the_slowest_ranks_closed_form():
    (row,) = summarize(timeline())
    assert row["slowest_rank"] == 1 and row["step_ms"] == 110.0
    assert row["compute_ms"] == 90.0 and row["communication_ms"] == 50.0 and row["exposed_ms"] == 20.0
    assert abs(row["overlap"] - 0.6) < 1e-12
    assert row["ranks"]["0"] == {"step": 100.0, "compute": 90.0, "communication": 40.0, "exposed": 10.0}


def run(*args):
    return subprocess.run([sys.executable, "-m", "ringtrain", "trace", "summary", *args], capture_output=True,
                          text=True, timeout=120)


def test_the_command_prints_a_row_per_step(tmp_path):
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": timeline()}))
    done = run(str(path), "--json", str(tmp_path / "rows.json"))
    assert done.returncode == 0, done.stderr
    assert "     1     110.0       90.0      50.0       20.0      60%       1" in done.stdout
    assert json.loads((tmp_path / "rows.json").read_text())["rows"][0]["exposed_ms"] == 20.0


def test_a_file_that_is_not_a_trace_is_refused_by_name(tmp_path):
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 1}\n')
    for path in (str(bad), str(tmp_path / "missing.json")):
        done = run(path)
        assert done.returncode == 2 and "is not a ringtrain trace" in done.stderr and "train --trace" in done.stderr
    empty = tmp_path / "empty.json"
    empty.write_text('{"traceEvents": []}')
    done = run(str(empty))
    assert done.returncode == 2 and "has no training steps" in done.stderr


def test_a_failed_run_keeps_each_ranks_part(tmp_path):
    from mpi4py import MPI

    from ringtrain.trace import Tracer
    tracer = Tracer(str(tmp_path / "run.json"), MPI.COMM_SELF)
    with tracer.span("backward", "compute", step=1):
        pass
    tracer.instant("bucket 0 ready", "bucket", bytes=4)
    part = json.loads((tmp_path / tracer.write_part().split("/")[-1]).read_text())
    names = [e["name"] for e in part["events"]]
    assert names == ["process_name", "process_sort_index", "backward", "bucket 0 ready"]
    assert part["clock"] == {"offset_us": 0.0, "error_us": 0.0} and not tracer.closed
