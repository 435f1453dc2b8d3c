"""Decoders against corrupted payloads: the only place a remote rank's bytes enter our memory.

Every decoder must either raise ValueError naming the codec, or return finite
float32 values of the expected size; never another exception, NaN or inf.
Kinds of corruption that a decoder can always detect must raise.
"""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringtrain import compression
from ringtrain.compression.base import all_finite

SPECS = ["fp16", "bf16", "int8", "int8:stochastic=1", "onebit", "topk:ratio=0.05", "topk:k=7",
         "powersgd:rank=2", "dgc:ratio=0.05", "int8+lz4", "ef+topk:ratio=0.05+lz4", "lz4"]
N = 1000
X = np.random.default_rng(5).standard_normal(N).astype(np.float32)


def encoded(spec):
    codec = compression.get(spec)
    payload, ctx = codec.compress(X)
    return codec, payload, ctx


def decodes_safely(codec, payload, ctx) -> bool:
    """True if the decoder refused; asserts the output is sound if it did not."""
    try:
        out = codec.decompress(payload, ctx)
    except ValueError:
        return True
    assert out.dtype == np.float32 and out.shape == (N,), (out.dtype, out.shape)
    assert np.isfinite(out).all()
    return False


@pytest.mark.parametrize("spec", SPECS)
def test_intact_payloads_decode(spec):
    codec, payload, ctx = encoded(spec)
    assert np.isfinite(codec.decompress(payload, ctx)).all()


def _scales_prefix(spec):
    """How many leading float32 scales the payload has (int8 and onebit), else 0."""
    if spec.startswith("int8") and "lz4" not in spec:
        return -(-N // 512)
    if spec == "onebit":
        return -(-N // 1024)
    return 0


def corruptions(spec, payload):
    """(kind, corrupted payload, must it be refused) for one codec."""
    yield "truncated", payload[:-1].copy(), True
    yield "one byte longer", np.concatenate([payload, [0]]).astype(np.uint8), True
    yield "empty", np.zeros(0, np.uint8), True
    yield "float32 dtype", payload.view(np.uint8).astype(np.float32), True
    yield "2-D", payload.reshape(1, -1).copy(), True
    scales = _scales_prefix(spec)
    for bad in (np.nan, np.inf, -1.0) + ((3e38,) if spec.startswith("int8") else ()):
        if scales:
            p = payload.copy()
            p[:4].view(np.float32)[0] = bad
            yield f"scale {bad}", p, True
    if spec in ("fp16", "bf16"):
        p = payload.copy()
        p[:2].view(np.uint16)[0] = 0x7E00 if spec == "fp16" else 0x7FC0  # a NaN
        yield "NaN value", p, True
    if spec.startswith("int8") and "lz4" not in spec:
        p = payload.copy()
        p[4 * scales] = 0x80  # -128: never produced by the encoder
        yield "int8 -128", p, True
    if spec.startswith(("topk", "dgc")):  # dgc sends top-k's (positions, values)
        p = payload.copy()
        p[:4].view(np.uint32)[0] = N + 5  # a position past the end
        yield "index out of range", p, True
        k = payload.size // 8
        p = payload.copy()
        p[4 * k:4 * k + 4].view(np.float32)[0] = np.nan
        yield "NaN value", p, True
    if spec.startswith("powersgd"):
        p = payload.copy()
        p[:4].view(np.float32)[0] = np.inf
        yield "inf factor", p, True
        p = payload.copy()
        p[:4].view(np.float32)[0] = 3e38
        yield "overflowing factor", p, False  # refused if the product overflows, else finite
    rng = np.random.default_rng(len(spec))
    for trial in range(3):
        yield f"random bytes {trial}", rng.integers(0, 256, payload.size, dtype=np.uint8), False


CASES = [(spec, kind, bad, must) for spec in SPECS for kind, bad, must in corruptions(spec, encoded(spec)[1])]


@pytest.mark.parametrize("spec, kind, bad, must", CASES, ids=[f"{s}-{k}" for s, k, _, _ in CASES])
def test_corrupted_payloads_are_refused_or_sound(spec, kind, bad, must):
    codec, _, ctx = encoded(spec)
    refused = decodes_safely(codec, bad, ctx)
    assert refused or not must, f"{spec}: a payload with {kind} was accepted"


def test_the_matrix_covers_every_compressor_in_the_registry():
    named = {part.partition(":")[0] for spec in SPECS for part in spec.split("+")}
    missing = set(compression.registry.NAMES) - {"none"} - named
    assert not missing, f"no corrupted payloads are tried for {sorted(missing)}: add a spec to SPECS"


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=0, max_size=9000))
def test_fuzzed_payloads_never_break_the_decoder(spec, data):
    codec, payload, ctx = encoded(spec)
    # Half the time keep the right size, where only the content can betray corruption.
    raw = np.frombuffer(data, dtype=np.uint8)
    if len(data) % 2 == 0:
        raw = np.resize(raw, payload.size) if raw.size else np.zeros(payload.size, np.uint8)
    decodes_safely(codec, raw.copy(), ctx)


@pytest.mark.parametrize("spec", ["fp16", "bf16", "int8", "onebit", "topk:ratio=0.05", "powersgd:rank=2", "lz4"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encoders_refuse_non_finite_input(spec, bad):
    x = X.copy()
    x[17] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        compression.get(spec).compress(x)


def test_fp16_refuses_values_beyond_its_range():
    with pytest.raises(ValueError, match="fp16: the input has NaN or inf"):
        compression.get("fp16").compress(np.array([1e5], np.float32))
    assert np.isfinite(compression.get("bf16").compress(np.array([1e5], np.float32))[0]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_finite_check_finds_every_non_finite_value(dtype):
    # all_finite reads 16-bit floats by their exponent bits: check it against torch.isfinite.
    x = torch.randn(257).to(dtype)
    x[3] = torch.finfo(dtype).max  # the largest finite value is finite
    assert all_finite(x) and all_finite(x[::2]) and all_finite(x[:0])
    for bad in (np.nan, np.inf, -np.inf):
        for at in (0, 100, 256):
            y = x.clone()
            y[at] = bad
            assert not all_finite(y) and not all_finite(y.numpy() if dtype.itemsize > 2 else y)
            assert not torch.isfinite(y).all()
