"""The gradient reducer's tuning options: what each accepts, and a clear error for anything else.

One type per option from Python to the run: bools for on/off, "auto"/"on"/"off"
for node_aware, in TrainConfig and GradientReducer alike; only the command line
spells a bool as on/off.
"""
import argparse

import pytest
import torch
from mpi4py import MPI

from ringtrain import GradientReducer, compression
from ringtrain.fault.errors import UsageError
from ringtrain.reducer.buckets import bucket_bytes
from ringtrain.train import TrainConfig
from ringtrain.train.config import add_arguments, from_args
from ringtrain.train.tuned import Tuned


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
                                                  ("node_aware", "yes", "node_aware='yes' is not allowed"),
                                                  ("node_aware", None, "node_aware=None is not allowed — one of"),
                                                  ("broadcast_buffers", "on", "broadcast_buffers='on' is not allowed"),
                                                  ("broadcast_buffers", 1, "broadcast_buffers=1 is not allowed")])
def test_other_bad_options_are_refused_by_name(option, value, words):
    with pytest.raises(ValueError, match=words):
        make(**{option: value})


def test_the_first_bucket_closes_at_its_own_cap():
    # Sizes in registration order; buckets fill from the last parameter.
    assert bucket_bytes([4, 4, 4, 4], 12) == [12, 4]
    assert bucket_bytes([4, 4, 4, 4], 12, first_cap_bytes=4) == [4, 12]
    assert bucket_bytes([4, 4, 4, 4], 12, first_cap_bytes=100) == [12, 4]


def parsed(*argv) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(list(argv)))


def test_the_command_line_maps_on_off_to_bools_and_nothing_else_does():
    assert TrainConfig().broadcast_buffers is True and TrainConfig().node_aware == "auto"
    cfg = parsed("--broadcast-buffers", "off", "--node-aware", "on", "--memory-check", "off")
    assert (cfg.broadcast_buffers, cfg.node_aware, cfg.memory_check) == (False, "on", False)
    assert parsed("--broadcast-buffers", "on").broadcast_buffers is True
    for field, value in [("broadcast_buffers", "on"), ("memory_check", "off"), ("node_aware", True)]:
        with pytest.raises(UsageError, match=f"{field} .* = {value!r}: not allowed"):
            TrainConfig(**{field: value})
    for argv in (["--broadcast-buffers", "yes"], ["--node-aware", "maybe"]):
        with pytest.raises(SystemExit):
            parsed(*argv)


def test_the_spec_is_parsed_once_per_config(monkeypatch):
    calls = []
    real = compression.get
    monkeypatch.setattr(compression, "get", lambda spec, **kw: calls.append(spec) or real(spec, **kw))
    cfg = TrainConfig(compression="dgc:ratio=0.01,momentum=0.9,masking=0")
    assert cfg.dgc_adam and cfg.dgc_adam and cfg.compressor.ratio == 0.01
    assert calls == ["dgc:ratio=0.01,momentum=0.9,masking=0"]


def test_tuned_is_a_record_and_reads_the_dicts_checkpoints_kept():
    old = {"compression": "none", "bucket_cap_mb": 10.0, "optimizer": "onebit-adam"}  # as written before
    tuned = Tuned.from_saved(old)
    assert (tuned.compression, tuned.bucket_cap_mb, tuned.optimizer) == ("none", 10.0, "onebit-adam")
    assert tuned.saved() == old and Tuned.from_saved({"compression": "fp16", "bucket_cap_mb": 5}).optimizer is None
    assert tuned.applied_to(TrainConfig()).optimizer == "onebit-adam"
    with pytest.raises(AttributeError):
        tuned.compression = "fp16"  # frozen


def test_each_compatibility_rule_is_one_function_that_config_and_reducer_both_say():
    from ringtrain.compression import compatibility as rules
    get = compression.get
    assert rules.zero_conflict(1, get("int8")) is None and rules.zero_conflict(0, get("ef+topk:ratio=0.1")) is None
    reason = rules.zero_conflict(2, get("ef+topk:ratio=0.1"))
    assert reason and rules.zero_conflict(1, rules.AUTO).startswith(reason)
    assert rules.onebit_adam_conflict(0, None) is None and rules.onebit_adam_conflict(1, None)
    dgc = get("dgc:ratio=0.1,momentum=0.9")
    assert rules.dgc_conflict(dgc, "adamw", 0.0, 0.9) is None and rules.dgc_conflict(dgc, "sgd", 0.0, 0.9) is None
    assert rules.dgc_conflict(dgc, "sgd", 0.9, 0.9) and rules.dgc_conflict(dgc, "adamw", 0.0, 0.95)
    assert rules.dgc_adam(dgc, "adamw", 0.9) and not rules.dgc_adam(get("dgc:ratio=0.1"), "adamw", 0.9)
    # The same reason, whichever interface refuses it.
    with pytest.raises(UsageError) as config:
        TrainConfig(zero=2, compression="ef+topk:ratio=0.1")
    with pytest.raises(ValueError) as reducer:
        make(zero=2, compression="ef+topk:ratio=0.1")
    assert reason in str(config.value) and reason in str(reducer.value)


def test_a_list_of_parameters_is_a_model_too():
    """The parameters alone (DistributedOptimizer's case): those that need gradients, no buffers, no forward hook."""
    w, frozen = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2), requires_grad=False)
    reducer = GradientReducer([w, frozen], comm=MPI.COMM_SELF)
    assert reducer.params == [w] and reducer._sync_buffers is None and not reducer.pending
    reducer.close()
    for bad, words in (([w, 3], "the list holds int"), ([w, w], "each parameter once"), ({"w": w}, "got dict")):
        with pytest.raises(ValueError, match=words):
            GradientReducer(bad, comm=MPI.COMM_SELF)
