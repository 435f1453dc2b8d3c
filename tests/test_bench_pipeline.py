"""``bench pipeline`` under mpiexec at 2 ranks: both backends trained the same bits, the ratio is from the same run."""
import pytest

from ringtrain.results import load_result
from tests.launch import run_mpi

SMALL = ["--width", "64", "--layers", "4", "--context", "16", "--batch-size", "4", "--micro-batches", "4",
         "--steps", "2", "--repeat", "2"]


@pytest.fixture(scope="module", params=["1f1b", "interleaved"])
def result(tmp_path_factory, request):
    path = tmp_path_factory.mktemp("bench") / "pipeline.json"
    out = run_mpi(2, ["-m", "ringtrain", "bench", "pipeline", *SMALL, "--schedule", request.param,
                      "--json", str(path)], timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout, load_result(str(path))


def test_pipelining_on_ringtrain_trains_the_bits_gloo_does(result):
    _, data = result
    # Point-to-point moves activations and gradients unchanged: the same steps give the same parameters.
    assert data["max_param_diff"] == 0.0
    assert [r["variant"] for r in data["rows"]] == ["pipeline-gloo", "pipeline-ringtrain"]
    assert data["benchmark"] == "pipeline" and data["meta"]["world_size"] == 2


def test_the_ratio_is_to_gloo_from_the_same_run(result):
    stdout, data = result
    gloo, ours = data["rows"]
    assert ours["vs_gloo"] == pytest.approx(ours["step_ms"] / gloo["step_ms"], rel=1e-9)
    assert f"{ours['vs_gloo']:.3f}" in stdout


def test_a_batch_the_micro_batches_do_not_divide_is_refused():
    out = run_mpi(2, ["-m", "ringtrain", "bench", "pipeline", *SMALL[:-6], "--batch-size", "6",
                      "--micro-batches", "4"], timeout=120)
    assert out.returncode != 0 and "--micro-batches 4 must divide --batch-size 6" in out.stderr + out.stdout
