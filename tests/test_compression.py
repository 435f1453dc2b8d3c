"""Compressors on one process: round trips, error bounds, error feedback, state, bad frames, names."""
import numpy as np
import pytest
from mpi4py import MPI

from ringtrain import compression
from ringtrain.compression import LZ4, Cast16, Compressor, ErrorFeedback, Int8, OneBit, Path, PowerSGD, RingCodec, TopK

RNG = np.random.default_rng(7)
X = RNG.standard_normal(10_007).astype(np.float32)


def round_trip(c, x):
    payload, ctx = c.compress(x)
    return c.decompress(payload, ctx), payload


def test_topk_with_k_equal_n_is_exact():
    y, payload = round_trip(TopK(k=X.size), X)
    assert np.array_equal(y, X) and payload.nbytes == 8 * X.size


def test_topk_keeps_the_largest_magnitudes():
    y, _ = round_trip(TopK(k=10), X)
    kept = np.flatnonzero(y)
    assert set(kept) == set(np.argsort(-np.abs(X))[:10]) and np.array_equal(y[kept], X[kept])


@pytest.mark.parametrize("n, k", [(300_000, 3000), (300_000, 4687), (300_000, 4688), (300_000, 1), (70_000, 700)])
def test_topk_from_a_sampled_threshold_is_the_exact_top_k(n, k):
    from ringtrain.compression.topk import largest
    rng = np.random.default_rng(n + k)
    for magnitude in (np.abs(rng.standard_t(3, n)).astype(np.float32),  # heavy tails
                      np.sort(rng.random(n, dtype=np.float32)),         # the largest all at one end
                      (rng.random(n) < 0.001).astype(np.float32)):      # ties: mostly zeros
        got = largest(magnitude, k)
        assert got.size == k and np.unique(got).size == k
        # The k largest values, whichever of equal ones were taken.
        assert np.array_equal(np.sort(magnitude[got]), np.sort(magnitude)[n - k:])


def test_fp16_is_exact_on_values_fp16_can_represent():
    x = X.astype(np.float16).astype(np.float32)
    assert np.array_equal(round_trip(Cast16("float16"), x)[0], x)


def test_fp16_and_bf16_errors_are_within_half_an_ulp():
    for dtype, eps in (("float16", 2.0**-10), ("bfloat16", 2.0**-7)):
        y, _ = round_trip(Cast16(dtype), X)
        assert np.all(np.abs(y - X) <= eps / 2 * np.abs(X) + 2.0**-24)


def test_lz4_is_lossless_bit_for_bit():
    y, _ = round_trip(LZ4(), X)
    assert np.array_equal(y.view(np.uint32), X.view(np.uint32))
    z, _ = round_trip(LZ4(Int8()), X)
    assert np.array_equal(z, round_trip(Int8(), X)[0])


def test_powersgd_recovers_a_matrix_of_rank_at_most_r():
    rows, cols = PowerSGD.matrix_shape(60 * 60)
    low_rank = (RNG.standard_normal((rows, 3)) @ RNG.standard_normal((3, cols))).astype(np.float32)
    y, payload = round_trip(PowerSGD(rank=4), low_rank.reshape(-1))
    assert np.linalg.norm(y - low_rank.reshape(-1)) <= 1e-4 * np.linalg.norm(low_rank)
    assert payload.nbytes == 4 * 4 * (rows + cols)


def test_powersgd_with_a_layout_compresses_each_matrix_and_sends_vectors_whole():
    low_rank = (RNG.standard_normal((64, 2)) @ RNG.standard_normal((2, 48))).astype(np.float32)
    small = RNG.standard_normal((4, 4)).astype(np.float32)  # (4 + 4) x 4 >= 16 / 2: not worth compressing
    bias = RNG.standard_normal(10).astype(np.float32)
    flat = np.concatenate([low_rank.reshape(-1), bias, small.reshape(-1)])
    c = PowerSGD(rank=4)
    c.set_layout([(0, 3072, (64, 48)), (3072, 3082, (10,)), (3082, 3098, (4, 4))])
    y, payload = round_trip(c, flat)
    assert payload.nbytes == 4 * ((64 + 48) * 4 + 10 + 16)
    assert np.linalg.norm(y[:3072] - flat[:3072]) <= 1e-4 * np.linalg.norm(low_rank)
    assert np.array_equal(y[3072:], flat[3072:])
    with pytest.raises(ValueError, match="the layout covers 3098 elements, the input has 3000"):
        c.compress(flat[:3000])


def test_int8_error_is_at_most_half_a_step_per_segment():
    c = Int8(segment=256)
    y, _ = round_trip(c, X)
    for lo in range(0, X.size, 256):
        step = np.abs(X[lo:lo + 256]).max() / 127
        assert np.all(np.abs(y[lo:lo + 256] - X[lo:lo + 256]) <= step / 2 * (1 + 1e-5))


def test_int8_stochastic_rounding_is_unbiased():
    x = np.array([0.3, -0.77, 0.05, 1.0, -0.5], dtype=np.float32)  # 1.0 fixes the scale at 1/127
    c = Int8(segment=8, stochastic=True, seed=123)
    draws = np.stack([round_trip(c, x)[0] for _ in range(4000)])
    step = 1 / 127
    # Each draw is x rounded down or up by one step: std <= step/2, so 5 sigma of the mean is small.
    assert np.all(np.abs(draws.mean(axis=0) - x) <= 5 * (step / 2) / np.sqrt(len(draws)))
    assert not np.array_equal(draws[0], draws[1])  # it does draw


@pytest.mark.parametrize("inner", [TopK(ratio=0.01), OneBit(), Int8(), Cast16("bfloat16")])
def test_error_feedback_sent_plus_residual_is_input_plus_old_residual(inner):
    ef = ErrorFeedback(inner)
    for step in range(3):
        x = RNG.standard_normal(5000).astype(np.float32)
        old = np.zeros_like(x) if ef.residual is None else ef.residual.copy()
        sent, _ = round_trip(ef, x)
        # One float32 rounding of x + old is all that separates the two sides.
        assert np.allclose(sent + ef.residual, x + old, rtol=0, atol=4e-7 * np.abs(x + old).max())


def test_error_feedback_hands_its_own_decoding_back_once_and_decodes_anything_else():
    inner = TopK(k=10)
    ef, decoded = ErrorFeedback(inner), []
    real = inner.decompress
    inner.decompress = lambda payload, ctx: decoded.append(payload.size) or real(payload, ctx)
    payload, ctx = ef.compress(RNG.standard_normal(100).astype(np.float32))
    assert len(decoded) == 1  # compress decodes its payload once, for the residual
    first = ef.decompress(payload, ctx)
    assert len(decoded) == 1  # the payload compress returned: its kept decoding, not a second decode
    assert np.array_equal(ef.decompress(payload, ctx), first) and len(decoded) == 2  # handed out once only
    assert np.array_equal(ef.decompress(payload.copy(), ctx), first) and len(decoded) == 3  # a copy: decoded
    bad = payload.copy()
    bad[-4:] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)  # the same size, a NaN value
    with pytest.raises(ValueError, match="topk: corrupted payload"):
        ef.decompress(bad, ctx)


@pytest.mark.parametrize("spec", ["ef+topk:ratio=0.02", "int8:stochastic=true,seed=3", "onebit", "powersgd:rank=3"])
def test_state_dict_round_trip_gives_identical_outputs(spec):
    # Steps through allreduce_mean on one process: PowerSGD's Q and residual move only there, not in compress.
    a = compression.get(spec)
    for _ in range(2):
        a.allreduce_mean(RNG.standard_normal(4096).astype(np.float32), MPI.COMM_SELF)
    b, fresh = compression.get(spec), compression.get(spec)
    b.load_state_dict(a.state_dict())
    x = RNG.standard_normal(4096).astype(np.float32)
    ya, yb, y_fresh = (c.allreduce_mean(x, MPI.COMM_SELF) for c in (a, b, fresh))
    assert np.array_equal(ya, yb)
    assert not np.array_equal(ya, y_fresh)  # the state matters: without it the next step differs


def test_corrupted_and_truncated_lz4_frames_raise_value_error():
    c = LZ4(Int8())
    payload, ctx = c.compress(X)
    for bad in (payload[: payload.size // 2], np.concatenate([payload, payload]),
                np.frombuffer(bytes(b ^ 0x5A for b in payload.tobytes()), dtype=np.uint8)):
        with pytest.raises(ValueError, match="lz4"):
            c.decompress(bad.copy(), ctx)


def test_a_frame_claiming_a_huge_size_is_refused_without_allocating_it():
    import lz4.block
    bomb = np.frombuffer(lz4.block.compress(bytes(1 << 26), store_size=False), dtype=np.uint8).copy()
    with pytest.raises(ValueError, match="lz4"):
        LZ4().decompress(bomb, (100, 400))


@pytest.mark.parametrize("c", [Compressor(), Cast16("float16"), Int8(), TopK(ratio=0.1), OneBit(), PowerSGD()])
def test_payload_size_mismatch_raises_value_error(c):
    payload, ctx = c.compress(X)
    with pytest.raises(ValueError, match="bytes"):
        c.decompress(payload[:-1].copy(), ctx)


def test_topk_rejects_indices_out_of_range():
    c = TopK(k=2)
    payload, ctx = c.compress(np.array([0, 5, 0, 7], np.float32))
    payload[:4] = np.array([9], np.uint32).view(np.uint8)
    with pytest.raises(ValueError, match="indices"):
        c.decompress(payload, ctx)


def test_wire_ratios_against_float32():
    n = 1 << 20
    x = RNG.standard_normal(n).astype(np.float32)
    ratio = {spec: compression.get(spec).compress(x)[0].nbytes / (4 * n)
             for spec in ("fp16", "bf16", "int8", "onebit", "topk:ratio=0.01", "powersgd:rank=4")}
    assert ratio["fp16"] == ratio["bf16"] == 0.5
    assert ratio["int8"] <= 0.26 and ratio["onebit"] <= 0.035 and ratio["topk:ratio=0.01"] <= 0.02
    assert ratio["powersgd:rank=4"] <= 0.01  # 1024 x 1024 layer: (1024 + 1024) x 4 floats


@pytest.mark.parametrize("spec, words", [
    ("zip", "unknown compressor 'zip'"),
    ("topk", "exactly one of ratio"),
    ("topk:ratio=2", "topk: ratio=2 is not allowed — a finite number > 0 and <= 1"),
    # Typed parameters: refused at parse time, never coerced.
    ("int8:stochastic=no", "int8: stochastic=no is not allowed — 1, 0, true or false"),
    ("powersgd:rank=2.5", "powersgd: rank=2.5 is not allowed — a whole number >= 1"),
    ("topk:k=2.5", "topk: k=2.5 is not allowed — a whole number >= 1"),
    ("int8:segment=abc", "int8: segment=abc is not allowed — a whole number >= 1"),
    ("int8:segment=0", "int8: segment=0 is not allowed"),
    ("onebit:chunk=12", "onebit: chunk=12 is not allowed — a multiple of 8, at least 8"),
    ("powersgd:min_ratio=nan", "powersgd: min_ratio=nan is not allowed — a finite number >= 1"),
    ("topk:ratio=inf", "topk: ratio=inf is not allowed"),
    ("int8:seed=-1", "int8: seed=-1 is not allowed"),
    ("int8:seed=1,seed=2", "int8 gets seed twice"),
    ("fp16:x=1", "fp16 has no parameter 'x'; it takes no parameters"),
    ("topk:rate=0.1", "topk has no parameter 'rate'; it takes ratio, k"),
    ("int8+topk:k=3", "one compressor per chain"),
    ("lz4+int8", "lz4 may appear once, last"),
    ("topk:ratio=0.1+ef", "ef must come first"),
    ("powersgd+lz4", "powersgd has its own"),
    ("topk:ratio", "key=value"),
])
def test_bad_specs_are_named(spec, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        compression.get(spec)


def test_constructors_use_the_same_rules():
    from ringtrain.compression.int8 import Int8
    from ringtrain.compression.powersgd import PowerSGD
    for build, args, said in [(Int8, {"stochastic": "no"}, "stochastic='no' is not allowed"),
                              (Int8, {"segment": 2.5}, "segment=2.5 is not allowed"),
                              (PowerSGD, {"rank": True}, "rank=True is not allowed")]:
        with pytest.raises(ValueError, match=said):
            build(**args)
    with pytest.raises(ValueError, match="ratio=nan is not allowed"):
        compression.get("topk", ratio=float("nan"))


def test_names_build_the_expected_chains():
    assert compression.get("none") is None
    assert compression.get("ef+topk:ratio=0.01+lz4").name == "ef(topk+lz4)"
    assert compression.get("onebit").name == "ef(onebit)"
    assert compression.get("topk", k=5).k == 5


def _train(spec, steps=600):
    """Gradient descent on least squares with the gradient passed through the compressor."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 1000)).astype(np.float32) / 20
    target = a @ rng.standard_normal(1000).astype(np.float32)
    w = np.zeros(1000, np.float32)
    c = compression.get(spec)
    for _ in range(steps):
        g = a.T @ (a @ w - target) / len(a)
        w -= 1.0 * (g if c is None else round_trip(c, g)[0])
    return float(np.mean((a @ w - target) ** 2))


def test_error_feedback_topk_and_onebit_reach_the_uncompressed_loss():
    plain = _train("none")
    start = _train("none", steps=0)
    for spec in ("ef+topk:ratio=0.01", "onebit"):
        # Within 5% of the uncompressed loss's progress from the start.
        assert _train(spec) <= plain + 0.05 * (start - plain), spec


RING, GATHERED, LOW_RANK = Path.RING_CODEC, Path.GATHERED, Path.LOW_RANK_ALLREDUCE


@pytest.mark.parametrize("spec, path, messages", [
    ("fp16", RING, 1), ("bf16", RING, 1), ("int8", RING, 1), ("powersgd:rank=2", LOW_RANK, 2),
    ("int8+lz4", GATHERED, 1), ("lz4", GATHERED, 1), ("topk:ratio=0.1", GATHERED, 1), ("onebit", GATHERED, 1),
    ("ef+int8", GATHERED, 1), ("ef+fp16", GATHERED, 1),  # error feedback gathers, whatever its inner codec does
    ("dgc:ratio=0.1", GATHERED, 1),
])
def test_each_compressor_states_how_it_travels(spec, path, messages, monkeypatch):
    from ringtrain.compression import powersgd
    from ringtrain.plan.fit import compression_kind
    c = compression.get(spec)
    assert (c.path, c.messages) == (path, messages)
    # Only a gathered compressor keeps the gathering default; the ring codecs are RingCodecs.
    assert (type(c).allreduce_mean is Compressor.allreduce_mean) == (path is GATHERED)
    assert isinstance(c, RingCodec) == (path is RING)
    calls = []
    monkeypatch.setattr(powersgd, "allreduce", lambda x, **kw: calls.append(x.numel()) or x)
    c.set_layout([(0, 4096, (64, 64))])
    c.allreduce_mean(RNG.standard_normal(4096).astype(np.float32), MPI.COMM_SELF)
    assert len(calls) == (messages if spec.startswith("powersgd") else 0)
    # The cost model takes these facts from the compressor, not from the spec's spelling.
    kind = compression_kind(spec)
    assert (kind.summable, kind.messages) == (path is not GATHERED, messages)


@pytest.mark.parametrize("spec", ["fp16", "bf16", "int8", "int8:segment=100", "onebit", "onebit:chunk=64",
                                  "topk:ratio=0.01", "topk:k=9", "powersgd:rank=3", "ef+int8", "ef+topk:ratio=0.1"])
@pytest.mark.parametrize("count", [1, 7, 1000, 10_007])
def test_wire_bytes_are_what_compress_sends(spec, count):
    c = compression.get(spec)
    assert c.wire_bytes(count) == c.compress(X[:count])[0].nbytes
    assert compression.get("int8+lz4").wire_bytes(count) is None  # lz4's gain depends on the data


@pytest.mark.parametrize("spec, feedback", [("fp16", False), ("int8+lz4", False), ("topk:ratio=0.1", False),
                                            ("ef+topk:ratio=0.1", True), ("onebit", True), ("powersgd", True)])
def test_each_compressor_states_whether_error_feedback_is_built_in(spec, feedback):
    c = compression.get(spec)
    assert c.feedback == feedback
    # Feedback means a residual that the next step pays back: it is in the state a checkpoint saves.
    c.set_layout([(0, 4096, (64, 64))])
    c.allreduce_mean(RNG.standard_normal(4096).astype(np.float32), MPI.COMM_SELF)
    state = c.state_dict()
    assert (state.get("residual") is not None) == feedback
