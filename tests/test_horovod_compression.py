"""ringtrain.horovod's Compression and DistributedOptimizer's argument checks, on one process without MPI calls."""
import pytest
import torch

import ringtrain.horovod as hvd
from ringtrain.compression import ErrorFeedback, TopK, get, spec_of
from ringtrain.horovod.compression import reducer_compression
from ringtrain.horovod.named_parameters import check_groups, named_parameters_of


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_fp16_sends_floating_tensors_as_half_and_returns_their_dtype(dtype):
    t = torch.linspace(-3, 3, 11, dtype=dtype)
    sent, ctx = hvd.Compression.fp16.compress(t)
    back = hvd.Compression.fp16.decompress(sent, ctx)
    assert sent.dtype == torch.float16 and back.dtype == dtype
    assert torch.equal(back, t.to(torch.float16).to(dtype))  # exactly one rounding to half


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool])
def test_fp16_passes_other_dtypes_unchanged(dtype):
    t = torch.ones(5, dtype=dtype)
    sent, ctx = hvd.Compression.fp16.compress(t)
    assert sent is t and hvd.Compression.fp16.decompress(sent, ctx) is t


def test_none_is_the_identity():
    t = torch.randn(4)
    sent, ctx = hvd.Compression.none.compress(t)
    assert sent is t and ctx is None and hvd.Compression.none.decompress(sent, ctx) is t


@pytest.mark.parametrize("spec", ["fp16", "bf16", "int8", "ef+int8", "topk:ratio=0.1", "ef+topk:ratio=0.1+lz4",
                                  "powersgd:rank=2", "dgc:ratio=0.01", "onebit"])
def test_from_spec_carries_any_ringtrain_spec_to_the_reducer(spec):
    c = hvd.Compression.from_spec(spec)
    assert reducer_compression(c) == spec and spec_of(get(reducer_compression(c))) == get(spec).name


def test_from_spec_takes_a_compressor_object_and_the_reducer_gets_fresh_copies():
    proto = ErrorFeedback(TopK(0.1))
    c = hvd.Compression.from_spec(proto)
    assert reducer_compression(c) is proto and get(reducer_compression(c)) is not proto


def test_what_the_reducer_gets_for_horovods_values():
    assert reducer_compression(hvd.Compression.none) is None
    assert reducer_compression(hvd.Compression.fp16) == "fp16"
    assert reducer_compression(None) is None and reducer_compression("int8") == "int8"
    with pytest.raises(ValueError, match="compression="):
        reducer_compression(object())
    with pytest.raises(ValueError):
        hvd.Compression.from_spec("nonsense")


def test_a_spec_that_runs_inside_the_reducer_refuses_a_lone_tensor():
    with pytest.raises(ValueError, match="inside DistributedOptimizer"):
        hvd.Compression.from_spec("ef+int8").compress(torch.ones(3))
    sent, ctx = hvd.Compression.from_spec("bf16").compress(torch.ones(3))
    back = hvd.Compression.from_spec("bf16").decompress(sent, ctx)
    assert sent.dtype == torch.bfloat16 and back.dtype == torch.float32


def test_parameter_names_as_horovod_names_and_checks_them():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    groups = [{"params": [a]}, {"params": [b]}]
    assert list(named_parameters_of(groups, None).values()) == ["allreduce.noname.0.0", "allreduce.noname.1.0"]
    assert named_parameters_of(groups, iter([("a", a), ("b", b), ("extra", torch.zeros(1))]))[b] == "b"
    with pytest.raises(ValueError, match="unique"):
        named_parameters_of(groups, [("x", a), ("x", b)])
    with pytest.raises(ValueError, match="no name"):
        named_parameters_of(groups, [("a", a)])
    with pytest.raises(ValueError, match="tuples"):
        named_parameters_of(groups, [a, b])


@pytest.mark.parametrize("groups", [0, -1, 1.5, True, "2", [[torch.zeros(1), 3]]])
def test_bad_groups_are_refused(groups):
    with pytest.raises(ValueError, match="groups"):
        check_groups(groups)


def test_good_groups_pass():
    t = torch.zeros(1)
    for groups in (None, 1, 4, [[t], []]):
        check_groups(groups)
    with pytest.raises(ValueError, match="twice"):
        check_groups([[t], [t]])
