"""DGC top-k against a reference written here (momentum correction, factor masking, local clipping, the density
warm-up), and through the trainer: it learns, and resumes bit for bit."""
import numpy as np
import pytest
import torch
from mpi4py import MPI

from ringtrain.compression import get
from ringtrain.fault import Preempted
from ringtrain.train import TrainConfig, train
from tests.helpers import all_ranks_agree
from tests.mpi.test_training import TINY, corpus, flat_params, out_dir  # noqa: F401  (corpus is a fixture)

WORLD = MPI.COMM_WORLD


def reference(grads, ratio, momentum, warmup, clip, masking=True):
    """Every step's average, from every rank's gradients ``grads[step][rank]``, as DGC defines it."""
    n, count = len(grads[0]), grads[0][0].size
    u = [np.zeros(count, np.float64) for _ in range(n)]
    v = [np.zeros(count, np.float64) for _ in range(n)]
    out = []
    for step, per_rank in enumerate(grads):
        density = ratio if step >= warmup else 0.25 * (ratio / 0.25) ** (step / warmup)
        k = max(1, min(count, int(density * count)))
        total = np.zeros(count, np.float64)
        for r in range(n):
            g = per_rank[r].astype(np.float64)
            if clip and np.linalg.norm(g) > clip / np.sqrt(n):
                g = g * (clip / np.sqrt(n)) / (np.linalg.norm(g) + 1e-6)
            u[r] = momentum * u[r] + g
            v[r] = v[r] + u[r]
            top = np.argsort(-np.abs(v[r]))[:k]
            total[top] += v[r][top]
            v[r][top] = 0
            if masking:
                u[r][top] = 0
        out.append(total / n)
    return out


@pytest.mark.mpi
@pytest.mark.parametrize("momentum, clip, masking", [(0.9, 0.0, 1), (0.0, 0.0, 1), (0.9, 2.0, 1), (0.9, 0.0, 0)])
def test_dgc_matches_the_reference(momentum, clip, masking):
    ratio, warmup, steps, count = 0.05, 4, 7, 500
    rng = np.random.default_rng([7, WORLD.Get_rank()])
    mine = [rng.standard_normal(count).astype(np.float32) for _ in range(steps)]
    everyone = [WORLD.allgather(g) for g in mine]
    c = get(f"dgc:ratio={ratio},momentum={momentum},warmup={warmup},clip={clip},masking={masking}")
    got = [c.allreduce_mean(g, WORLD) for g in mine]
    expected = reference(everyone, ratio, momentum, warmup, clip, bool(masking))
    worst = max(float(np.abs(a - b).max()) for a, b in zip(got, expected))
    sent = [int((a != 0).sum()) for a in got]
    # The warm-up sends more: 25% at the first step, falling to the ratio.
    falling = sent[0] >= sent[warmup] and sent[warmup] <= WORLD.Get_size() * int(ratio * count)
    assert all_ranks_agree(worst <= 1e-5 and falling), (worst, sent)


@pytest.mark.mpi
def test_dgc_trains_and_resumes_bit_for_bit(corpus, mpi_tmp_path):  # noqa: F811
    common = dict(TINY, steps=8, batch_size=2, data=corpus, optimizer="sgd", momentum=0.0, lr=0.5,
                  compression="dgc:ratio=0.05,momentum=0.9,warmup=3,clip=1", out_dir=out_dir(mpi_tmp_path))
    whole = train(TrainConfig(**common, checkpoint_dir=f"{mpi_tmp_path}/a"))
    with pytest.raises(Preempted):
        train(TrainConfig(**common, checkpoint_dir=f"{mpi_tmp_path}/b", stop_after=4))
    resumed = train(TrainConfig(**common, checkpoint_dir=f"{mpi_tmp_path}/b"))
    assert all_ranks_agree(whole["losses"][-1] < whole["losses"][0])
    assert all_ranks_agree(resumed["losses"] == whole["losses"][4:])
    assert all_ranks_agree(torch.equal(flat_params(whole["model"]), flat_params(resumed["model"])))


def frozen_adamw_reference(model, loss, batches, lr, warmup, betas=(0.9, 0.95), eps=1e-8, decay=0.01):
    """AdamW on averaged gradients for ``warmup`` steps, then its variance frozen: momentum SGD at lr / D."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=decay)
    params = list(model.parameters())
    for step, batch in enumerate(batches):
        model.zero_grad()
        loss(model, batch).backward()
        for p in params:  # the average over ranks, as the reducer gives it
            WORLD.Allreduce(MPI.IN_PLACE, p.grad.numpy())
            p.grad /= WORLD.Get_size()
        if step < warmup:
            opt.step()
            continue
        with torch.no_grad():
            for p in params:
                state = opt.state[p]
                frozen = float(state["step"])
                m = state["exp_avg"].mul_(betas[0]).add_(p.grad, alpha=1 - betas[0])
                state["m_steps"] = state.get("m_steps", frozen) + 1
                d = state["exp_avg_sq"].sqrt() / (1 - betas[1] ** frozen) ** 0.5 + eps
                p.mul_(1 - lr * decay).addcdiv_(m, d, value=-lr / (1 - betas[0] ** state["m_steps"]))


@pytest.mark.mpi
def test_dgc_under_adamw_at_full_density_without_masking_is_frozen_variance_adamw():
    from ringtrain.reducer import DGCAdam, GradientReducer
    torch.manual_seed(0)
    make = lambda: torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))  # noqa: E731
    ours, theirs = make(), make()
    theirs.load_state_dict(ours.state_dict())
    rng = torch.Generator().manual_seed(11 + WORLD.Get_rank())
    batches = [(torch.randn(4, 6, generator=rng), torch.randn(4, 3, generator=rng)) for _ in range(9)]

    def loss(model, batch):
        return torch.nn.functional.mse_loss(model(batch[0]), batch[1])
    reducer = GradientReducer(ours, comm=WORLD)
    optimizer = DGCAdam(reducer, ours.parameters(), lr=0.01, betas=(0.9, 0.95), warmup=3,
                        dgc=get("dgc:ratio=1,momentum=0.9,masking=0"))
    for batch in batches:
        optimizer.zero_grad()
        loss(ours, batch).backward()
        reducer.synchronize()
        optimizer.step()
    reducer.close()
    frozen_adamw_reference(theirs, loss, batches, lr=0.01, warmup=3)
    worst = max(float((a - b).detach().abs().max()) for a, b in zip(ours.parameters(), theirs.parameters()))
    assert all_ranks_agree(worst <= 1e-6), worst


@pytest.mark.mpi
def test_dgc_under_adamw_learns_and_resumes_bit_for_bit(corpus, mpi_tmp_path):  # noqa: F811
    common = dict(TINY, steps=10, batch_size=2, data=corpus, onebit_warmup=3,
                  compression="dgc:ratio=0.05,momentum=0.9,warmup=3,masking=0", out_dir=out_dir(mpi_tmp_path))
    whole = train(TrainConfig(**common, checkpoint_dir=f"{mpi_tmp_path}/a"))
    with pytest.raises(Preempted):
        train(TrainConfig(**common, checkpoint_dir=f"{mpi_tmp_path}/b", stop_after=6))
    resumed = train(TrainConfig(**common, checkpoint_dir=f"{mpi_tmp_path}/b"))
    params = flat_params(whole["model"]).numpy()
    same = np.array_equal(params, WORLD.bcast(params, root=0))
    assert all_ranks_agree(whole["losses"][-1] < whole["losses"][0] and same)
    assert all_ranks_agree(resumed["losses"] == whole["losses"][6:])
    assert all_ranks_agree(torch.equal(flat_params(whole["model"]), flat_params(resumed["model"])))
