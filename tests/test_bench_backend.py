"""``bench backend`` under mpiexec at 2 ranks: every op on every backend, every result right, one result file."""
import pytest

from ringtrain.bench.backend import BACKENDS
from ringtrain.bench.backend_ops import CASES
from ringtrain.results import load_result
from tests.launch import run_mpi


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "backend.json"
    out = run_mpi(2, ["-m", "ringtrain", "bench", "backend", "--max-bytes", "256", "--step-factor", "32",
                      "--repeat", "2", "--max-iters", "5", "--latency-calls", "20", "--json", str(path)], timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout, load_result(str(path))


def test_every_op_runs_on_every_backend_at_every_size_with_nothing_wrong(result):
    _, data = result
    rows = data["rows"]
    seen = {(r["size"], r["op"], r["backend"]) for r in rows}
    assert seen == {(size, op, backend) for size in (8, 256) for op in CASES for backend in BACKENDS}
    assert len(rows) == len(seen)
    assert [r for r in rows if r["wrong"] != 0] == []
    assert data["benchmark"] == "backend" and data["meta"]["world_size"] == 2 and "torch" in data["meta"]


def test_ratios_and_busbw_come_from_the_same_run(result):
    _, data = result
    by = {(r["size"], r["op"], r["backend"]): r for r in data["rows"]}
    for (size, op, backend), row in by.items():
        gloo, mpi = by[(size, op, "gloo")], by[(size, op, "mpi4py")]
        assert row["vs_gloo"] == pytest.approx(gloo["time_us"] / row["time_us"], rel=1e-9)
        assert row["vs_mpi"] == pytest.approx(mpi["time_us"] / row["time_us"], rel=1e-9)
        assert row["busbw"] == pytest.approx(row["algbw"] * CASES[op].busbw_factor(2), rel=1e-9)
        assert len(row["time_us_reps"]) == 2
    # The reported time is the median of the repetitions: with two, their mean.
    assert all(r["time_us"] == pytest.approx(sum(r["time_us_reps"]) / 2) for r in data["rows"])


def test_the_latency_table_and_summary_name_every_backend_and_op(result):
    stdout, data = result
    latency = {r["backend"]: r for r in data["latency"]}
    assert set(latency) == set(BACKENDS) and all(r["calls"] == 20 and r["median_us"] > 0 for r in latency.values())
    assert latency["ringtrain"]["time_vs_gloo"] == pytest.approx(
        latency["ringtrain"]["median_us"] / latency["gloo"]["median_us"])
    assert latency["mpi4py"]["over_mpi_us"] == 0
    assert set(CASES) <= set(data["summary"])
    for op in CASES:
        assert f"# {op}: ringtrain busbw >= gloo's" in stdout
    assert "1-element all_reduce: ringtrain" in stdout


def test_an_unknown_op_is_refused_by_name():
    out = run_mpi(1, ["-m", "ringtrain", "bench", "backend", "--ops", "all_reduce,scan"], timeout=120)
    assert out.returncode != 0 and "--ops has ['scan']" in out.stderr
