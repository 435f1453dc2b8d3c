"""``bench memory`` under mpiexec at 2 ranks: ZeRO-3 holds half the parameters, and every ZeRO variant half the
optimizer state, of unsharded training in the same run."""
import pytest

from ringtrain.results import load_result
from tests.launch import run_mpi


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "memory.json"
    out = run_mpi(2, ["-m", "ringtrain", "bench", "memory", "--widths", "64", "--layers", "2", "--context", "16",
                      "--steps", "2", "--variants", "unsharded,zero2,zero3", "--json", str(path)], timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    return {r["variant"]: r for r in load_result(str(path))["rows"]}


def test_zero3_holds_half_the_parameters_at_two_ranks(rows):
    whole = rows["unsharded"]["params_held_mb"]
    # FSDP2 cuts each parameter's rows in two: within a few rows of half.
    assert rows["zero3"]["params_held_mb"] == pytest.approx(whole / 2, rel=0.02)


def test_zero_variants_hold_half_the_optimizer_state(rows):
    full = rows["unsharded"]["state_mb"]
    assert rows["zero2"]["state_mb"] == pytest.approx(full / 2, rel=0.02)
    assert rows["zero3"]["state_mb"] == pytest.approx(full / 2, rel=0.02)
    assert rows["zero3"]["grads_mb"] == pytest.approx(rows["unsharded"]["grads_mb"] / 2, rel=0.02)
