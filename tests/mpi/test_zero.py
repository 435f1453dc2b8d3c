"""ZeRO stages 1 and 2: bitwise equal to unsharded training on the ring, 1/N of the optimizer state (and of the
gradients), and checkpoints that resume exactly at the same or any other world size."""
import dataclasses
import os

import pytest
import torch
from mpi4py import MPI

import ringtrain
from ringtrain.collectives import thresholds
from ringtrain.fault import Preempted
from ringtrain.train import TrainConfig, train
from ringtrain.train.memory import usage
from tests.helpers import all_ranks_agree
from tests.mpi.test_training import TINY, corpus, flat_params, out_dir  # noqa: F401  (corpus is a fixture)

WORLD = MPI.COMM_WORLD
# Several buckets, one cut through a parameter by the chunks; AdamW's groups, warm-up and cosine all in play.
COMMON = dict(TINY, steps=5, batch_size=2, accumulate=2, warmup=2, bucket_cap_mb=0.004, grad_clip=0.0)


@pytest.fixture
def ring(monkeypatch):
    """Unsharded buckets through the ring allreduce, as ZeRO's reduce-scatter is (MPI's own sums differently)."""
    monkeypatch.setattr(thresholds, "THRESHOLDS", dataclasses.replace(thresholds.THRESHOLDS, ring_min_bytes=0))



@pytest.mark.mpi
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_zero_1_and_2_equal_unsharded_training_bit_for_bit(corpus, tmp_path, ring, optimizer):  # noqa: F811
    extra = dict(optimizer=optimizer, momentum=0.9 if optimizer == "sgd" else 0.0)
    runs = [train(TrainConfig(**COMMON, **extra, data=corpus, zero=z, out_dir=out_dir(tmp_path / str(z))))
            for z in (0, 1, 2)]
    same = [r["losses"] == runs[0]["losses"] and torch.equal(flat_params(r["model"]), flat_params(runs[0]["model"]))
            for r in runs[1:]]
    moved = runs[0]["losses"][-1] < runs[0]["losses"][0]
    assert all_ranks_agree(all(same) and moved), same


@pytest.mark.mpi
@pytest.mark.parametrize("spec", ["fp16", "bf16", "int8"])
def test_codecs_that_sum_on_the_ring_give_zero_the_unsharded_bits(corpus, tmp_path, spec):  # noqa: F811
    runs = [train(TrainConfig(**COMMON, data=corpus, zero=z, compression=spec, node_aware="off",
                              out_dir=out_dir(tmp_path / str(z)))) for z in (0, 1, 2)]
    same = [r["losses"] == runs[0]["losses"] and torch.equal(flat_params(r["model"]), flat_params(runs[0]["model"]))
            for r in runs[1:]]
    assert all_ranks_agree(all(same)), same


@pytest.mark.mpi
def test_clipping_uses_the_global_norm(corpus, tmp_path, ring):  # noqa: F811
    clip = dict(COMMON, grad_clip=0.05)  # small enough to clip every step
    runs = [train(TrainConfig(**clip, data=corpus, zero=z, out_dir=out_dir(tmp_path / str(z)))) for z in (0, 2)]
    a, b = flat_params(runs[0]["model"]), flat_params(runs[1]["model"])
    worst = float((a - b).abs().max() / a.abs().max())
    assert all_ranks_agree(worst <= 1e-6), f"relative difference {worst:.2e}"


@pytest.mark.mpi
def test_state_and_gradients_are_one_nth(corpus, tmp_path):  # noqa: F811
    n = WORLD.Get_size()
    held = {}
    for z in (0, 1, 2):
        result = train(TrainConfig(**COMMON, data=corpus, zero=z, out_dir=out_dir(tmp_path / str(z))))
        held[z] = usage(result["model"], result["sync"], result["optimizer"])
    params = list(result["model"].parameters())
    largest = max(p.numel() for p in params) * 4
    full_grads = sum(p.numel() for p in params) * 4
    bucket = int(COMMON["bucket_cap_mb"] * 1e6) + largest
    ok_state = all(held[z]["optimizer_state"] <= held[0]["optimizer_state"] / n + 2 * largest + 64 for z in (1, 2))
    ok_grads = held[2]["gradients"] <= full_grads / n + bucket
    assert all_ranks_agree(ok_state and ok_grads), held


@pytest.mark.mpi
def test_resume_at_the_same_world_size_is_bit_exact(corpus, mpi_tmp_path):  # noqa: F811
    common = dict(COMMON, steps=6, data=corpus, zero=2, out_dir=out_dir(mpi_tmp_path), grad_clip=1.0)
    whole = train(TrainConfig(**common, checkpoint_dir=str(mpi_tmp_path / "a")))
    with pytest.raises(Preempted):
        train(TrainConfig(**common, checkpoint_dir=str(mpi_tmp_path / "b"), stop_after=3))
    resumed = train(TrainConfig(**common, checkpoint_dir=str(mpi_tmp_path / "b")))
    assert all_ranks_agree(resumed["losses"] == whole["losses"][3:])
    assert all_ranks_agree(torch.equal(flat_params(whole["model"]), flat_params(resumed["model"])))


def _ranks(n):
    """A communicator of ranks 0 .. n-1 of WORLD (COMM_NULL on the others)."""
    return WORLD.Split(0 if WORLD.Get_rank() < n else MPI.UNDEFINED, WORLD.Get_rank())


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("before, after", [(4, 2), (2, 3), (3, 1), (2, 1), (1, 2)])
def test_resharding_resume_equals_resuming_the_consolidated_state(corpus, mpi_tmp_path, ring, before,  # noqa: F811
                                                                  after):
    """Sharded at ``before`` ranks, resumed sharded at ``after``: the same bits as unsharded training resumed at
    ``after`` from the same checkpoint, which joins every shard into the whole state."""
    if max(before, after) > WORLD.Get_size():
        pytest.skip(f"needs {max(before, after)} ranks")
    where = str(mpi_tmp_path / "ckpt")
    common = dict(COMMON, data=corpus, out_dir=out_dir(mpi_tmp_path))
    first = _ranks(before)
    if first != MPI.COMM_NULL:
        train(TrainConfig(**dict(common, steps=3), zero=1, checkpoint_dir=where), comm=first)
        first.Free()
    WORLD.Barrier()
    path = os.path.join(where, "step-00000003")
    ok = True
    second = _ranks(after)
    if second != MPI.COMM_NULL:
        sharded = train(TrainConfig(**dict(common, steps=5), zero=2, resume=path), comm=second)
        whole = train(TrainConfig(**dict(common, steps=5), zero=0, resume=path), comm=second)
        ok = (sharded["start_step"] == 3 and sharded["losses"] == whole["losses"]
              and torch.equal(flat_params(sharded["model"]), flat_params(whole["model"])))
        # Not a reset: AdamW's state came along (a fresh one would make the update the same size everywhere).
        opt = whole["optimizer"]
        ok = ok and all(int(s["step"]) == 5 for s in opt.state.values()) and len(opt.state) == len(
            [p for p in whole["model"].parameters()])
        second.Free()
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_a_damaged_shard_falls_back_to_the_checkpoint_before(corpus, mpi_tmp_path):  # noqa: F811
    where = str(mpi_tmp_path / "d")
    common = dict(COMMON, steps=4, data=corpus, zero=1, out_dir=out_dir(mpi_tmp_path), checkpoint_every="2",
                  checkpoint_dir=where)
    train(TrainConfig(**common))
    if WORLD.Get_rank() == 0:
        victim = os.path.join(where, "step-00000004", f"rank-{WORLD.Get_size() - 1:05d}.pt")
        with open(victim, "r+b") as f:
            f.seek(100)
            f.write(b"\xff" * 16)
    WORLD.Barrier()
    resumed = train(TrainConfig(**dict(common, steps=5)))
    assert all_ranks_agree(resumed["start_step"] == 2)


@pytest.mark.mpi
def test_zero_optimizer_on_a_plain_reducer_is_refused():
    model = torch.nn.Linear(3, 2)
    reducer = ringtrain.GradientReducer(model)
    try:
        with pytest.raises(ValueError, match="needs a GradientReducer made with zero=1 or zero=2"):
            ringtrain.ZeroOptimizer(reducer, torch.optim.AdamW, model.parameters())
        with pytest.raises(ValueError, match="compression 'ef\\+int8' with ZeRO: not supported yet .* fp16, bf16, "
                                             "int8"):
            ringtrain.GradientReducer(model, zero=1, compression="ef+int8")
    finally:
        reducer.close()
