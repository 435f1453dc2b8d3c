"""Compressor objects in the reducer, a registered compressor of the user's, and tracing by wrapping.

An object gives the same averaged gradients as its spec, bit for bit, with
every bucket keeping its own state; a compressor registered by name runs
through the reducer and matches a mean computed here from MPI's own
allgather of the local gradients.
"""
import contextlib

import numpy as np
import pytest
import torch
from mpi4py import MPI

from ringtrain import GradientReducer, compression
from ringtrain.compression import LZ4, Cast16, ErrorFeedback, Int8, PowerSGD, TopK
from ringtrain.examples.random_k import RandomK
from ringtrain.train import TrainConfig
from tests.helpers import all_ranks_agree

WORLD = MPI.COMM_WORLD
CAP_MB = 0.001  # a few hundred floats: several buckets, each with a compressor of its own


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.Tanh(), torch.nn.Linear(24, 8))


def batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + WORLD.Get_rank())  # differs per rank and step
    return torch.randn(5, 16, generator=g)


def averaged(compression_, steps=3, trace=None):
    """The averaged gradients of each step (flat, float32 numpy), and the reducer."""
    m = model()
    options = {} if trace is None else {"trace": trace}
    reducer = GradientReducer(m, bucket_cap_mb=CAP_MB, compression=compression_, node_aware="off", **options)
    grads = []
    try:
        for step in range(steps):
            m.zero_grad(set_to_none=True)
            m(batch(step)).square().sum().backward()
            reducer.synchronize()
            grads.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]).numpy().copy())
    finally:
        reducer.close()
    return grads, reducer


PAIRS = [("ef+topk:ratio=0.1", lambda: ErrorFeedback(TopK(0.1))), ("int8", Int8), ("bf16", lambda: Cast16("bfloat16")),
         ("ef+int8+lz4", lambda: ErrorFeedback(LZ4(Int8()))), ("powersgd:rank=2", lambda: PowerSGD(rank=2)),
         ("onebit", lambda: compression.get("onebit"))]


@pytest.mark.mpi
@pytest.mark.parametrize("spec, build", PAIRS, ids=[s for s, _ in PAIRS])
def test_an_object_averages_as_its_spec_bit_for_bit(spec, build):
    given = build()
    from_spec, _ = averaged(spec)
    from_object, reducer = averaged(given)
    same = all(np.array_equal(a, b) for a, b in zip(from_spec, from_object))
    # Each bucket ran a copy of its own; the object given stays unused, a prototype.
    copies = len({id(c) for c in reducer.compressors}) == len(reducer.buckets) > 1
    untouched = given.state_dict() == build().state_dict() if spec in ("int8", "bf16") else \
        all(v is None for v in given.state_dict().values() if not isinstance(v, dict))
    assert all_ranks_agree(same and copies and untouched and given not in reducer.compressors), (same, copies)


@pytest.mark.mpi
def test_a_registered_compressor_runs_through_the_reducer_as_computed_here():
    got, reducer = averaged("randomk:ratio=0.5", steps=2)
    # The same draws as each bucket's RandomK (seed 0, one draw per step), applied to every rank's own
    # gradient, which MPI's allgather brings here; the mean of those, in rank order. (One rank sends
    # nothing, and the reducer compresses nothing there: the gradient is its own mean.)
    m = reducer.model  # closed, so no hooks; its weights are as they were (no optimizer step)
    draws = [np.random.default_rng(0) for _ in reducer.buckets]
    expected = []
    for step in range(2):
        m.zero_grad(set_to_none=True)
        m(batch(step)).square().sum().backward()
        flat = {}
        for b, rng in zip(reducer.buckets, draws):
            local = torch.cat([p.grad.reshape(-1) for p in b.params]).numpy()
            keep = np.full(local.size, WORLD.Get_size() == 1)
            keep[rng.choice(local.size, max(1, int(0.5 * local.size)), replace=False)] = True
            every = WORLD.allgather(np.where(keep, local, 0).astype(np.float32))
            total = np.zeros(local.size, np.float32)
            for part in every:
                total += part
            mean = total / np.float32(WORLD.Get_size())
            for p, (lo, hi) in zip(b.params, b.bounds):
                flat[id(p)] = mean[lo:hi]
        expected.append(np.concatenate([flat[id(p)] for p in m.parameters()]))
    close = all(np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(got, expected))
    named = all(isinstance(c, RandomK) for c in reducer.compressors)
    assert all_ranks_agree(close and named), max(float(np.abs(a - b).max()) for a, b in zip(got, expected))


def test_a_registered_name_is_a_spec_for_the_config_too():
    cfg = TrainConfig(compression="ef+randomk:ratio=0.25")
    assert cfg.compressor.name == "ef(randomk)" and cfg.compressor.inner.ratio == 0.25
    with pytest.raises(ValueError, match="randomk: ratio=2 is not allowed"):
        compression.get("randomk:ratio=2")
    for name, cls, words in [("ef", RandomK, "not one of none, lz4, ef"), ("topk", RandomK, "is a built-in"),
                             ("mine", dict, "a subclass of ringtrain.compression.Compressor")]:
        with pytest.raises(ValueError, match=words):
            compression.register(name, cls)


class Spans:
    """A trace that keeps the names of its spans."""

    enabled = True

    def __init__(self):
        self.names = []

    @contextlib.contextmanager
    def span(self, name, cat="", **args):
        self.names.append(name)
        yield

    def instant(self, name, cat="", **args):
        self.names.append(name)


@pytest.mark.mpi
def test_tracing_wraps_the_compressor_and_changes_no_bit():
    plain, _ = averaged("ef+topk:ratio=0.1")
    trace = Spans()
    traced, reducer = averaged("ef+topk:ratio=0.1", trace=trace)
    same = all(np.array_equal(a, b) for a, b in zip(plain, traced))
    # Nothing patched onto the compressors; the wrapper's spans are there where anything was averaged.
    patched = any(name in vars(c) for c in reducer.compressors for name in ("compress", "decompress"))
    spans = {"compress", "decompress"} <= set(trace.names) if WORLD.Get_size() > 1 else True
    assert all_ranks_agree(same and not patched and spans), (same, patched, sorted(set(trace.names)))


@pytest.mark.mpi
def test_fit_takes_an_object_and_its_checkpoint_resumes(mpi_tmp_path):
    """fit with ErrorFeedback(TopK(0.5)) trains as with its spec; its checkpoint names it and resumes."""
    import torch.nn.functional as F

    import ringtrain

    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 5, generator=g)
    data = torch.utils.data.TensorDataset(x, x @ torch.randn(5, 2, generator=g))

    def run(compression_, steps, **options):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        return ringtrain.fit(net, lambda m, a, b: F.mse_loss(m(a), b), data, steps=steps, batch_size=4,
                             log_every=100, eval_every=0, compression=compression_,
                             out_dir=str(mpi_tmp_path / "out"), **options)

    spec = run("ef+topk:ratio=0.5", 4)
    given = ErrorFeedback(TopK(0.5))
    first = run(given, 2, checkpoint_dir=str(mpi_tmp_path / "ckpt"))
    resumed = run(given, 4, checkpoint_dir=str(mpi_tmp_path / "ckpt"))
    ok = spec["losses"] == first["losses"] + resumed["losses"] and resumed["start_step"] == 2
    ok &= resumed["tuned"]["compression"] == "ef(topk)" and given.residual is None
    assert all_ranks_agree(ok), (spec["losses"], first["losses"], resumed["losses"])
