"""ringtrain.fit on map-style datasets: N ranks at batch b equal one rank at N*b (SGD), BatchNorm statistics
equal everywhere, mid-epoch resume bit for bit, worker processes changing nothing."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mpi4py import MPI

import ringtrain
from ringtrain.data import DatasetBatches
from ringtrain.fault import Preempted
from ringtrain.train import TrainConfig
from ringtrain.train.model_factory import make_optimizer
from tests.helpers import all_ranks_agree, identical_across_ranks

WORLD = MPI.COMM_WORLD
# SGD at a constant rate, no clipping: the closed form of one step is p - lr * (grad + wd * p).
SGD = dict(optimizer="sgd", lr=0.05, warmup=0, min_lr_ratio=1.0, grad_clip=0.0, eval_every=0, log_every=100)


def regression_data(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return torch.utils.data.TensorDataset(x, x @ torch.randn(5, 2, generator=g) + 0.1 * torch.randn(n, 2, generator=g))


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def mse(model, x, y):
    return F.mse_loss(model(x), y)


class BatchNormNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                        torch.nn.Linear(8, 2))

    def forward(self, x):
        return self.body(x)


def out_dir(tmp_path):
    return str(tmp_path / f"rank{WORLD.Get_rank()}")


def flat(model):
    return torch.cat([t.detach().reshape(-1).double() for t in list(model.parameters()) + list(model.buffers())])


@pytest.mark.mpi
@pytest.mark.parametrize("accumulate, last_batch", [(1, "pad"), (2, "pad"), (1, "drop")])
def test_n_ranks_at_b_equal_one_rank_at_n_times_b(tmp_path, accumulate, last_batch):
    n, b = WORLD.Get_size(), 3
    common = dict(SGD, steps=12, accumulate=accumulate, last_batch=last_batch, seed=4)  # 12 steps cross epochs
    ours = ringtrain.fit(mlp(), mse, regression_data(), config=TrainConfig(**common, batch_size=b,
                                                                           out_dir=out_dir(tmp_path)))
    alone = ringtrain.fit(mlp(), mse, regression_data(), comm=MPI.COMM_SELF,
                          config=TrainConfig(**common, batch_size=n * b, out_dir=out_dir(tmp_path / "alone")))
    worst = float((flat(ours["model"]) - flat(alone["model"])).abs().max())
    moved = float((flat(alone["model"]) - flat(mlp())).abs().max())
    assert all_ranks_agree(worst <= 1e-6 and moved > 1e-2), f"differs by {worst:.2e} (moved {moved:.2e})"
    assert all_ranks_agree(bool(np.allclose(ours["losses"], alone["losses"], rtol=1e-6, atol=1e-7)))


def ghost_batch_reference(steps, b, n, cfg):
    """One process, the global batch cut into the N per-rank pieces: BatchNorm normalises each piece by its own
    statistics, the loss is the mean over the pieces, and the running statistics follow piece 0 (rank 0's)."""
    model = BatchNormNet()
    optimizer = make_optimizer(cfg, model)
    source = DatasetBatches(regression_data(), batch=n * b, seed=cfg.seed, rank=0, world=1, drop_last=False)
    for step in range(steps):
        x, y = source.train(step)
        # The other ranks' statistics are overwritten by rank 0's: theirs update copies, thrown away.
        params = dict(model.named_parameters())
        loss = sum(mse(lambda v: torch.func.functional_call(
            model, {**params, **{k: t.clone() for k, t in model.named_buffers()}}, (v,)),
            x[r * b:(r + 1) * b], y[r * b:(r + 1) * b]) for r in range(1, n))
        loss = (loss + mse(model, x[:b], y[:b])) / n
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model


@pytest.mark.mpi
def test_batchnorm_with_buffers_synchronised_equals_the_ghost_batch_reference(tmp_path):
    n, b, steps = WORLD.Get_size(), 4, 10
    cfg = TrainConfig(**SGD, steps=steps, batch_size=b, seed=2, out_dir=out_dir(tmp_path))
    ours = ringtrain.fit(BatchNormNet(), mse, regression_data(), val_data=regression_data(13, seed=1), config=cfg)
    reference = ghost_batch_reference(steps, b, n, cfg)
    worst = float((flat(ours["model"]) - flat(reference)).abs().max())
    tracked = int(ours["model"].body[1].num_batches_tracked)
    equal = identical_across_ranks(flat(ours["model"]).numpy())
    assert all_ranks_agree(equal), "parameters or buffers differ between ranks"
    assert all_ranks_agree(worst <= 1e-6 and tracked == steps), f"differs by {worst:.2e}; {tracked} batches tracked"


@pytest.mark.mpi
@pytest.mark.parametrize("workers", [0, 1])
def test_resume_mid_epoch_is_bit_exact(mpi_tmp_path, workers):
    # 50 samples, global batch 2N: the stop at step 7 is mid-epoch at every N from 1 to 4, and the run crosses
    # at least one epoch boundary after it.
    common = dict(optimizer="adamw", steps=16, batch_size=2, seed=8, eval_every=5, loader_workers=workers,
                  out_dir=out_dir(mpi_tmp_path), log_every=100)
    whole = ringtrain.fit(BatchNormNet(), mse, regression_data(), val_data=regression_data(9, seed=3),
                          config=TrainConfig(**common, checkpoint_dir=f"{mpi_tmp_path}/a"))
    with pytest.raises(Preempted) as stop:
        ringtrain.fit(BatchNormNet(), mse, regression_data(), val_data=regression_data(9, seed=3),
                      config=TrainConfig(**common, checkpoint_dir=f"{mpi_tmp_path}/b", stop_after=7))
    resumed = ringtrain.fit(BatchNormNet(), mse, regression_data(), val_data=regression_data(9, seed=3),
                            config=TrainConfig(**common, checkpoint_dir=f"{mpi_tmp_path}/b"))
    same = torch.equal(flat(whole["model"]), flat(resumed["model"]))
    assert all_ranks_agree(stop.value.step == 7 and resumed["start_step"] == 7)
    assert all_ranks_agree(resumed["losses"] == whole["losses"][7:]), "loss sequences differ"
    assert all_ranks_agree(resumed["val_metrics"] == whole["val_metrics"][1:]), "validation differs"
    assert all_ranks_agree(same), "final parameters or buffers differ"


@pytest.mark.mpi
def test_metrics_are_averaged_over_every_validation_sample(tmp_path):
    val = regression_data(11, seed=5)
    model = mlp()

    def max_error(m, x, y):  # a mean per batch, so the weighted mean is the mean over samples
        return (m(x) - y).abs().amax(dim=1).mean()

    result = ringtrain.fit(model, mse, regression_data(), val_data=val, metrics={"max_error": max_error},
                           config=TrainConfig(**SGD, steps=2, batch_size=2, out_dir=out_dir(tmp_path)))
    with torch.no_grad():
        x, y = val.tensors
        expected = {"loss": float(F.mse_loss(result["model"](x), y, reduction="none").mean(dim=1).mean()),
                    "max_error": float((result["model"](x) - y).abs().amax(dim=1).mean())}
    got = result["val_metrics"][-1][1]
    assert all_ranks_agree(all(abs(got[k] - v) <= 1e-6 for k, v in expected.items())), (got, expected)


@pytest.mark.mpi
def test_resuming_with_another_model_is_refused_in_one_line(mpi_tmp_path):
    common = dict(SGD, steps=2, batch_size=2, out_dir=out_dir(mpi_tmp_path), checkpoint_dir=f"{mpi_tmp_path}/c")
    ringtrain.fit(mlp(), mse, regression_data(), config=TrainConfig(**common))
    with pytest.raises(ringtrain.fault.UsageError, match=r"holds another model's weights .* resume='none'") as e:
        ringtrain.fit(BatchNormNet(), mse, regression_data(), config=TrainConfig(**common))
    assert all_ranks_agree(e.value.agreed)
