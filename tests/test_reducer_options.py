"""The gradient reducer's tuning options: what each accepts, and a clear error for anything else."""
import pytest
import torch
from mpi4py import MPI

from ringtrain import GradientReducer
from ringtrain.reducer.buckets import bucket_bytes


def make(**options):
    return GradientReducer(torch.nn.Linear(4, 2), comm=MPI.COMM_SELF, **options)


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), 1e6, True, "fast"])
def test_a_bad_poll_sleep_is_refused_by_name(value):
    with pytest.raises(ValueError, match="poll_sleep_us is not allowed — microseconds between polls"):
        make(poll_sleep_us=value)


def test_the_poll_sleep_comes_from_the_argument_the_environment_or_the_default(monkeypatch):
    assert make().poll_sleep_us == 200.0 and make(poll_sleep_us=0).poll_sleep_us == 0.0
    monkeypatch.setenv("RINGTRAIN_POLL_SLEEP_US", "50")
    assert make().poll_sleep_us == 50.0 and make(poll_sleep_us=10).poll_sleep_us == 10.0
    monkeypatch.setenv("RINGTRAIN_POLL_SLEEP_US", "soon")
    with pytest.raises(ValueError, match="RINGTRAIN_POLL_SLEEP_US='soon' is not allowed"):
        make()


@pytest.mark.parametrize("option, value, words", [("first_bucket_mb", 0, "first_bucket_mb must be > 0"),
                                                  ("node_aware", "yes", "node_aware='yes' is not allowed")])
def test_other_bad_options_are_refused_by_name(option, value, words):
    with pytest.raises(ValueError, match=words):
        make(**{option: value})


def test_the_first_bucket_closes_at_its_own_cap():
    # Sizes in registration order; buckets fill from the last parameter.
    assert bucket_bytes([4, 4, 4, 4], 12) == [12, 4]
    assert bucket_bytes([4, 4, 4, 4], 12, first_cap_bytes=4) == [4, 12]
    assert bucket_bytes([4, 4, 4, 4], 12, first_cap_bytes=100) == [12, 4]
