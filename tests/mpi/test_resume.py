"""Resume is exact: 2k steps equal k steps, a stop, a resume and k more, bit for bit, with and without compression."""
import pytest
import torch
from mpi4py import MPI

from ringtrain.train import TrainConfig, train
from ringtrain.fault import Preempted, UsageError
from tests.helpers import all_ranks_agree
from tests.mpi.test_training import TINY, corpus, out_dir  # noqa: F401  (corpus is a fixture)

WORLD = MPI.COMM_WORLD



@pytest.mark.mpi
@pytest.mark.parametrize("optimizer, spec", [("adamw", "none"), ("sgd", "none"), ("adamw", "ef+topk:ratio=0.05"),
                                             ("adamw", "powersgd:rank=2"), ("sgd", "int8:stochastic=true+lz4")])
def test_stop_and_resume_equals_an_uninterrupted_run(corpus, mpi_tmp_path, optimizer, spec):  # noqa: F811
    common = dict(TINY, data=corpus, steps=8, batch_size=2, optimizer=optimizer, momentum=0.9 if optimizer == "sgd"
                  else 0.0, out_dir=out_dir(mpi_tmp_path), eval_every=3, compression=spec)
    whole = train(TrainConfig(**common, checkpoint_dir=str(mpi_tmp_path / "a")))
    ckpt = str(mpi_tmp_path / "b")
    with pytest.raises(Preempted) as stop:
        train(TrainConfig(**common, checkpoint_dir=ckpt, stop_after=4))
    resumed = train(TrainConfig(**common, checkpoint_dir=ckpt))
    same_params = all(torch.equal(a, b) for a, b in zip(whole["model"].parameters(), resumed["model"].parameters()))
    stopped_right = stop.value.code == 75 and stop.value.step == 4 and resumed["start_step"] == 4
    # Decided together, after the last collective: a rank that failed alone would leave the others waiting.
    assert all_ranks_agree(stopped_right), f"stopped with {stop.value.code} at {stop.value.step}"
    assert all_ranks_agree(resumed["losses"] == whole["losses"][4:]), "loss sequences differ"
    assert all_ranks_agree(same_params), "final parameters differ"


@pytest.mark.mpi
def test_resuming_with_a_different_model_is_refused(corpus, mpi_tmp_path):  # noqa: F811
    ckpt = str(mpi_tmp_path / "c")
    train(TrainConfig(**dict(TINY, width=32), data=corpus, steps=2, checkpoint_dir=ckpt, out_dir=out_dir(mpi_tmp_path)))
    with pytest.raises(UsageError, match=r"different configuration \(width: 32 -> 64\)"):
        train(TrainConfig(**dict(TINY, width=64), data=corpus, steps=2, checkpoint_dir=ckpt,
                          out_dir=out_dir(mpi_tmp_path)))
