"""``bench fsdp`` under mpiexec at 2 ranks: both backends trained alike, ratios from the same run, one result file."""
import pytest

from ringtrain.results import load_result
from tests.launch import run_mpi

SMALL = ["--width", "64", "--layers", "2", "--context", "16", "--batch-size", "2", "--steps", "2", "--repeat", "2"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "fsdp.json"
    out = run_mpi(2, ["-m", "ringtrain", "bench", "fsdp", *SMALL, "--json", str(path)], timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout, load_result(str(path))


def test_fsdp2_on_ringtrain_trains_as_fsdp2_on_gloo(result):
    _, data = result
    # Both variants took the same 6 AdamW steps from the same seed; only the summation order may differ.
    assert data["max_param_diff"] <= 1e-6
    assert [r["variant"] for r in data["rows"]] == ["fsdp-gloo", "fsdp-ringtrain"]
    assert data["benchmark"] == "fsdp" and data["meta"]["world_size"] == 2


def test_the_ratio_is_to_gloo_from_the_same_run(result):
    stdout, data = result
    gloo, ours = data["rows"]
    assert ours["vs_gloo"] == pytest.approx(ours["step_ms"] / gloo["step_ms"], rel=1e-9)
    assert all(len(r["step_ms_reps"]) == 2 and r["step_ms"] == pytest.approx(sum(r["step_ms_reps"]) / 2)
               for r in data["rows"])
    assert f"{ours['vs_gloo']:.3f}" in stdout


def test_an_hsdp_shard_size_that_does_not_divide_the_world_is_refused():
    out = run_mpi(2, ["-m", "ringtrain", "bench", "fsdp", *SMALL, "--hsdp", "3"], timeout=120)
    assert out.returncode != 0 and "--hsdp 3: must divide the world size 2" in out.stderr + out.stdout
