"""ZeRO-3 (--zero 3, FSDP2 over the ringtrain backend) in the trainer: the losses of unsharded training and of
FSDP2 over gloo, 1/N of the parameters, validation with uneven shares, and checkpoints that move between
--zero 3 and --zero 0 exactly."""
import os
import shutil

import pytest
import torch
from mpi4py import MPI

import ringtrain
from ringtrain.fault import Preempted
from ringtrain.optim.interface import local_nbytes
from ringtrain.train import TrainConfig, train
from ringtrain.train.fully_sharded import FullyShardedSync
from tests.helpers import all_ranks_agree
from tests.mpi.backend_setup import stop
from tests.mpi.test_training import TINY, corpus, out_dir  # noqa: F401  (corpus is a fixture)

WORLD = MPI.COMM_WORLD
# Two blocks and the root: three FSDP2 groups; the tied head in the root. AdamW's groups, warm-up and cosine.
COMMON = dict(TINY, layers=2, steps=5, batch_size=2, warmup=2)


@pytest.fixture(scope="module", autouse=True)
def _stop_torch_distributed():
    """--zero 3 leaves torch.distributed up (the trained model's shards need it); the next module starts afresh."""
    yield
    stop()


def whole(model) -> torch.Tensor:
    """Every parameter, gathered, in order. Collective under --zero 3."""
    return torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().reshape(-1)
                      for p in model.parameters()])


def relative_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


@pytest.mark.mpi
@pytest.mark.parametrize("accumulate", [1, 2])
def test_zero3_trains_what_unsharded_training_does(corpus, tmp_path, accumulate):  # noqa: F811
    runs = {z: train(TrainConfig(**COMMON, accumulate=accumulate, grad_clip=0.05, data=corpus, zero=z,
                                 out_dir=out_dir(tmp_path / str(z)))) for z in (0, 3)}
    gap = relative_gap(runs[3]["losses"], runs[0]["losses"])
    a, b = whole(runs[3]["model"]), whole(runs[0]["model"])
    params_gap = float((a - b).abs().max() / b.abs().max())
    moved = runs[3]["losses"][-1] < runs[3]["losses"][0]
    assert all_ranks_agree(gap <= 1e-6 and params_gap <= 1e-5 and moved), (gap, params_gap, runs[3]["losses"])


@pytest.mark.mpi
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero3_on_ringtrain_equals_fsdp2_on_gloo(corpus, tmp_path, precision):  # noqa: F811
    cfg = TrainConfig(**COMMON, data=corpus, zero=3, param_dtype=precision, out_dir=out_dir(tmp_path / "ours"))
    ours = train(cfg)

    def gloo(task, cfg, comm, tuned, tracer):
        return FullyShardedSync(task.model, comm, param_dtype=cfg.param_dtype, reduce_dtype=cfg.reduce_dtype,
                                backend="gloo")

    theirs = train(TrainConfig(**COMMON, data=corpus, zero=3, param_dtype=precision,
                               out_dir=out_dir(tmp_path / "gloo")), make_sync=gloo)
    gap = relative_gap(ours["losses"], theirs["losses"])
    assert all_ranks_agree(gap <= 1e-6 and ours["losses"][-1] < ours["losses"][0]), (gap, ours["losses"])


@pytest.mark.mpi
def test_a_rank_holds_one_nth_of_the_parameters_and_optimizer_state(corpus, tmp_path):  # noqa: F811
    n = WORLD.Get_size()
    result = train(TrainConfig(**COMMON, data=corpus, zero=3, out_dir=out_dir(tmp_path)))
    params = list(result["model"].parameters())
    whole_bytes = sum(p.numel() for p in params) * 4
    # FSDP2 cuts each parameter's first dimension in N: a rank's part is at most one row more than 1/N.
    bound = sum(-(-p.shape[0] // n) * (p.numel() // p.shape[0]) for p in params) * 4
    held = sum(local_nbytes(p) for p in params)
    state = sum(local_nbytes(t) for s in result["optimizer"].state.values() for t in s.values() if t.dim())
    ok = held <= bound and (n == 1 or held < whole_bytes) and state == 2 * held  # AdamW: two moments per element
    assert all_ranks_agree(ok), (held, bound, whole_bytes, state)


class Stack(torch.nn.Module):
    """Two layers in a ModuleList (a group each) and a head (the root's)."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])
        self.head = torch.nn.Linear(4, 1)

    def forward(self, x):
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.head(x)


@pytest.mark.mpi
def test_uneven_validation_shares_run_in_lockstep(tmp_path):
    """A dataset whose validation batches differ in number between ranks: ZeRO-3's collective forwards must
    still pair up, and the mean must be that of unsharded training."""
    def task():
        torch.manual_seed(0)
        return Stack()

    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(40, 4, generator=g), torch.randn(40, 1, generator=g))
    val = torch.utils.data.TensorDataset(torch.randn(7, 4, generator=g), torch.randn(7, 1, generator=g))

    def mse(m, x, y):
        return torch.nn.functional.mse_loss(m(x), y)

    runs = {z: ringtrain.fit(task(), mse, data, val_data=val, steps=3, batch_size=1, zero=z, eval_every=1,
                             sample_tokens=0, log_every=100, out_dir=out_dir(tmp_path / str(z))) for z in (0, 3)}
    vals = {z: [v for _, v in runs[z]["val_losses"]] for z in (0, 3)}
    assert all_ranks_agree(len(vals[3]) == 3 and relative_gap(vals[3], vals[0]) <= 1e-6), vals


@pytest.mark.mpi
@pytest.mark.parametrize("resume_at", [3, 0])
def test_a_zero3_checkpoint_resumes_exactly(corpus, mpi_tmp_path, resume_at):  # noqa: F811
    """Written at --zero 3, resumed at --zero 3 (bit for bit) or --zero 0 (its first step bit for bit: the
    state loaded is the one saved; later steps sum in another order)."""
    common = dict(COMMON, steps=6, data=corpus, grad_clip=1.0)
    ckpt = str(mpi_tmp_path / "ckpt")
    whole_run = train(TrainConfig(**common, zero=3, out_dir=out_dir(mpi_tmp_path / "whole")))
    with pytest.raises(Preempted):
        train(TrainConfig(**common, zero=3, stop_after=3, checkpoint_dir=ckpt, out_dir=out_dir(mpi_tmp_path / "a")))
    resumed = train(TrainConfig(**common, zero=resume_at, checkpoint_dir=ckpt, out_dir=out_dir(mpi_tmp_path / "b")))
    ours, theirs = resumed["losses"], whole_run["losses"][3:]
    if resume_at == 3:
        exact = ours == theirs and torch.equal(whole(resumed["model"]), whole(whole_run["model"]))
    else:
        exact = ours[0] == theirs[0] and relative_gap(ours, theirs) <= 1e-6
    assert all_ranks_agree(exact), (ours, theirs)


@pytest.mark.mpi
@pytest.mark.parametrize("zero", [3, 0])
def test_a_zero3_checkpoint_loads_what_one_unsharded_process_loads(corpus, mpi_tmp_path, zero):  # noqa: F811
    """The file holds whole tensors: loaded by a run at --zero 3 or 0 (any world size), the parameters are
    bitwise those an unsharded model on one rank gets from it with torch.load."""
    common = dict(COMMON, steps=3, data=corpus)
    ckpt = str(mpi_tmp_path / "ckpt")
    train(TrainConfig(**common, zero=3, checkpoint_dir=ckpt, out_dir=out_dir(mpi_tmp_path / "a")))
    loaded = train(TrainConfig(**common, zero=zero, checkpoint_dir=ckpt, out_dir=out_dir(mpi_tmp_path / "b")))
    assert all_ranks_agree(loaded["losses"] == [] and torch.equal(whole(loaded["model"]), whole(_model_at(ckpt, 3))))


@pytest.mark.mpi(min_size=2)
def test_a_zero3_checkpoint_resumes_on_one_rank(corpus, mpi_tmp_path):  # noqa: F811
    """Written by N ranks at --zero 3, resumed by each rank alone (its own copy of the checkpoint) at --zero 0:
    the loaded parameters are bitwise the file's, at another world size."""
    common = dict(COMMON, steps=3, data=corpus)
    ckpt = str(mpi_tmp_path / "ckpt")
    train(TrainConfig(**common, zero=3, checkpoint_dir=ckpt, out_dir=out_dir(mpi_tmp_path / "a")))
    mine = f"{ckpt}-rank{WORLD.Get_rank()}"
    shutil.copytree(ckpt, mine)
    alone = train(TrainConfig(**common, zero=0, checkpoint_dir=mine, out_dir=out_dir(mpi_tmp_path / "b")),
                  MPI.COMM_SELF)
    assert all_ranks_agree(alone["losses"] == [] and torch.equal(whole(alone["model"]), whole(_model_at(ckpt, 3))))


def _model_at(ckpt: str, step: int):
    """The unsharded GPT of the checkpoint at ``step``, loaded by torch alone, as one process would."""
    from ringtrain.model import GPT, GPTConfig
    model = GPT(GPTConfig(context=COMMON["context"], layers=COMMON["layers"], heads=COMMON["heads"],
                          width=COMMON["width"]))
    state = torch.load(os.path.join(ckpt, f"step-{step:08d}", "replicated.pt"), weights_only=True)
    model.load_state_dict(state["model"])
    return model


@pytest.mark.mpi
def test_an_unsharded_checkpoint_resumes_at_zero3(corpus, mpi_tmp_path):  # noqa: F811
    common = dict(COMMON, steps=6, data=corpus)
    ckpt = str(mpi_tmp_path / "ckpt")
    whole_run = train(TrainConfig(**common, zero=0, out_dir=out_dir(mpi_tmp_path / "whole")))
    with pytest.raises(Preempted):
        train(TrainConfig(**common, zero=0, stop_after=3, checkpoint_dir=ckpt, out_dir=out_dir(mpi_tmp_path / "a")))
    resumed = train(TrainConfig(**common, zero=3, checkpoint_dir=ckpt, out_dir=out_dir(mpi_tmp_path / "b")))
    ours, theirs = resumed["losses"], whole_run["losses"][3:]
    assert all_ranks_agree(ours[0] == theirs[0] and relative_gap(ours, theirs) <= 1e-6), (ours, theirs)


@pytest.mark.mpi(min_size=2)
def test_zero3_on_part_of_the_job_is_refused(corpus, tmp_path):  # noqa: F811
    part = WORLD.Split(int(WORLD.Get_rank() == 0))
    try:
        with pytest.raises(ringtrain.UsageError, match=r"--zero 3 runs over all \d+ ranks of the job .* run it on "
                                                       "COMM_WORLD, or use --zero 2"):
            train(TrainConfig(**COMMON, data=corpus, zero=3, out_dir=out_dir(tmp_path)), part)
    finally:
        part.Free()
