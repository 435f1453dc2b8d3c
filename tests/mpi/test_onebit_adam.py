"""1-bit Adam: exactly AdamW in its warm-up; then identical parameters on every rank, about 1/32 of the bytes,
the two-sided error-feedback sign allreduce against a reference written here, and exact resume."""
import numpy as np
import pytest
import torch
from mpi4py import MPI

from ringtrain.compression.onebit_allreduce import OneBitAllreduce
from ringtrain.fault import Preempted
from ringtrain.train import TrainConfig, train
from tests.helpers import all_ranks_agree, identical_across_ranks
from tests.mpi.test_training import TINY, corpus, flat_params, out_dir  # noqa: F401  (corpus is a fixture)

WORLD = MPI.COMM_WORLD
COMMON = dict(TINY, steps=8, batch_size=2, warmup=2)


@pytest.mark.mpi
def test_the_warm_up_is_adamw_bit_for_bit(corpus, tmp_path):  # noqa: F811
    adamw = train(TrainConfig(**COMMON, data=corpus, out_dir=out_dir(tmp_path / "a")))
    onebit = train(TrainConfig(**COMMON, data=corpus, optimizer="onebit-adam", onebit_warmup=8,
                               out_dir=out_dir(tmp_path / "b")))
    same = adamw["losses"] == onebit["losses"] and torch.equal(flat_params(adamw["model"]),
                                                               flat_params(onebit["model"]))
    assert all_ranks_agree(same)


@pytest.mark.mpi
def test_after_the_freeze_ranks_agree_and_send_a_32nd(corpus, tmp_path):  # noqa: F811
    n = WORLD.Get_size()
    result = train(TrainConfig(**dict(COMMON, steps=12), data=corpus, optimizer="onebit-adam", onebit_warmup=4,
                               out_dir=out_dir(tmp_path)))
    params = flat_params(result["model"])
    equal = identical_across_ranks(params.numpy())
    sent = result["sync"].last_wire_bytes  # the last step: compressed
    ring = 2 * (n - 1) / n * 4 * params.numel()
    ratio = sent / ring if n > 1 else 0.0
    learned = result["losses"][-1] < result["losses"][0]
    assert all_ranks_agree(equal and learned), "parameters differ between ranks, or nothing was learned"
    assert all_ranks_agree(ratio <= 0.05 and (n == 1 or ratio > 0.02)), f"wire ratio {ratio:.4f}"


def _reference(inputs, chunk, calls):
    """Every rank's result of ``calls`` successive sign allreduces, simulated in one place from all inputs."""
    n, count = len(inputs[0]), inputs[0][0].size

    def signs(x):  # one scale per chunk, the chunk's mean |x|; +scale where x >= 0, else -scale
        out = np.empty_like(x)
        for lo in range(0, x.size, chunk):
            part = x[lo:lo + chunk]
            out[lo:lo + chunk] = np.where(part >= 0, 1.0, -1.0) * np.abs(part).mean(dtype=np.float64)
        return out.astype(np.float32)

    per = -(-count // (n * chunk)) * chunk
    parts = [(min(i * per, count), min((i + 1) * per, count)) for i in range(n)]
    worker = [np.zeros(count, np.float32) for _ in range(n)]
    server = [np.zeros(hi - lo, np.float32) for lo, hi in parts]
    results = []
    for call in range(calls):
        sent = []
        for r in range(n):
            c = inputs[call][r] + worker[r]
            d = np.concatenate([signs(c[lo:hi]) for lo, hi in parts])
            worker[r] = c - d
            sent.append(d)
        out = np.empty(count, np.float32)
        for s, (lo, hi) in enumerate(parts):
            if hi > lo:
                total = np.zeros(hi - lo, np.float32)
                for r in range(n):
                    total += sent[r][lo:hi]
                v = total / n + server[s]
                out[lo:hi] = signs(v)
                server[s] = v - out[lo:hi]
        results.append(out)
    return results


@pytest.mark.mpi
@pytest.mark.parametrize("count", [1, 100, 4096, 5000])
def test_the_sign_allreduce_matches_a_reference_with_both_residuals(count):
    chunk, calls = 64, 3
    rng = np.random.default_rng([count, WORLD.Get_rank()])
    mine = [rng.standard_normal(count).astype(np.float32) for _ in range(calls)]
    everyone = [WORLD.allgather(x) for x in mine]  # [call][rank]
    state = OneBitAllreduce(count, WORLD, chunk=chunk)
    got = [state.mean(x.copy()) for x in mine]
    expected = _reference(everyone, chunk, calls)
    worst = max(float(np.abs(g - e).max() / (np.abs(e).max() + 1e-30)) for g, e in zip(got, expected))
    equal = identical_across_ranks(np.concatenate(got))
    assert all_ranks_agree(equal and worst <= 1e-5), f"relative difference {worst:.2e}"


@pytest.mark.mpi
def test_resume_in_the_compressed_phase_is_bit_exact(corpus, mpi_tmp_path):  # noqa: F811
    common = dict(COMMON, steps=10, data=corpus, optimizer="onebit-adam", onebit_warmup=3,
                  out_dir=out_dir(mpi_tmp_path))
    whole = train(TrainConfig(**common, checkpoint_dir=f"{mpi_tmp_path}/a"))
    with pytest.raises(Preempted):
        train(TrainConfig(**common, checkpoint_dir=f"{mpi_tmp_path}/b", stop_after=6))
    resumed = train(TrainConfig(**common, checkpoint_dir=f"{mpi_tmp_path}/b"))
    assert all_ranks_agree(resumed["losses"] == whole["losses"][6:])
    assert all_ranks_agree(torch.equal(flat_params(whole["model"]), flat_params(resumed["model"])))


DGC_ADAM = "dgc:ratio=0.01,momentum=0.9,warmup=200,masking=0"


@pytest.mark.mpi
@pytest.mark.parametrize("choice, given", [("onebit-adam", dict(optimizer="onebit-adam")),
                                           (DGC_ADAM, dict(compression=DGC_ADAM))])
def test_auto_may_choose_onebit_adam_or_dgc_and_a_resume_keeps_it(choice, given, corpus, mpi_tmp_path,  # noqa: F811
                                                                  monkeypatch):
    if WORLD.Get_size() == 1:
        pytest.skip("one rank averages nothing: auto chooses no compression there")
    from ringtrain.plan.costmodel import CostModel
    from ringtrain.train import autotune
    # The sweep said the choice keeps the loss, and the probe's scores say it pays.
    monkeypatch.setattr(autotune, "_cost_model", lambda: CostModel(alpha=0.0, loss_penalty={choice: 0.0}))
    real_score, calls = autotune.score, []

    def score(compute, models, *args, **kwargs):
        calls.append(set(models))  # {"none", choice}: it was probed, and nothing else was
        scores = real_score(compute, models, *args, **kwargs)
        return {key: (0.0 if key[0] == choice else 1.0) + (key[1] != 25) for key in scores}
    monkeypatch.setattr(autotune, "score", score)
    common = dict(COMMON, steps=10, data=corpus, onebit_warmup=3)
    explicit = train(TrainConfig(**common, **given, bucket_cap_mb=25, out_dir=out_dir(mpi_tmp_path / "e")))
    auto = dict(common, compression="auto", bucket_cap_mb="auto", checkpoint_dir=f"{mpi_tmp_path}/auto",
                out_dir=out_dir(mpi_tmp_path / "a"))
    with pytest.raises(Preempted):
        train(TrainConfig(**auto, stop_after=6))
    resumed = train(TrainConfig(**auto))
    # Probed once: the resume took the choice from the checkpoint.
    assert all_ranks_agree(calls == [{"none", choice}])
    tuned = ({"compression": "none", "optimizer": choice} if choice == "onebit-adam" else {"compression": choice})
    assert all_ranks_agree(resumed["tuned"] == {**tuned, "bucket_cap_mb": 25})
    assert all_ranks_agree(resumed["losses"] == explicit["losses"][6:])
    assert all_ranks_agree(torch.equal(flat_params(explicit["model"]), flat_params(resumed["model"])))
