"""ringtrain's optimizers are torch optimizers: LR schedulers set the lr each step uses, add_param_group,
zero_grad(set_to_none=), and a state_dict that resumes the next step bit for bit, old checkpoints included."""
import io
import math
import os

import pytest
import torch
from mpi4py import MPI

from ringtrain.fault import Preempted
from ringtrain.train import TrainConfig, train
from tests.helpers import all_ranks_agree
from tests.mpi.test_training import TINY, corpus, out_dir  # noqa: F401  (corpus is a fixture)
from tests.optim_cases import KINDS, WARMUP, build, flat, model, train_step

WORLD = MPI.COMM_WORLD
RANK = WORLD.Get_rank()
STEPS = WARMUP + 3  # AdamW's warm-up, the freeze, and frozen-variance steps after it
BASE_LR = 0.1
SCHEDULES = {
    "lambda": (lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 ** k),
               lambda k: BASE_LR * 0.5 ** k),
    "cosine": (lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS, eta_min=0.01),
               lambda k: 0.01 + (BASE_LR - 0.01) * (1 + math.cos(math.pi * k / STEPS)) / 2),
}


def _run(kind: str, lr: float, schedule=None) -> list[torch.Tensor]:
    """Each step's parameter change, training ``kind`` at ``lr`` (under ``schedule``, if given)."""
    net = model()
    reducer, optimizer = build(kind, net, WORLD, lr=lr)
    scheduler = schedule(optimizer) if schedule else None
    changes = []
    for step in range(STEPS):
        before = flat(net)
        train_step(net, reducer, optimizer, step, RANK)
        changes.append(flat(net) - before)
        if scheduler:
            scheduler.step()
    reducer.close()
    return changes


@pytest.mark.mpi
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_scheduler_sets_the_lr_each_step_uses(kind, schedule):
    """With weight decay 0 a step moves the parameters by lr times a direction that does not depend on lr (the
    gradients do not depend on the parameters): so each step's change, against a run at lr 1, is the lr used."""
    make, closed_form = SCHEDULES[schedule]
    scheduled = _run(kind, BASE_LR, make)
    unit = _run(kind, 1.0)
    used = [float((s * u).sum() / (u * u).sum()) for s, u in zip(scheduled, unit)]  # least squares: s = lr u
    expected = [closed_form(k) for k in range(STEPS)]
    worst = max(abs(a / b - 1) for a, b in zip(used, expected))
    assert all_ranks_agree(worst < 1e-4), f"{kind}: the steps used lr {used}, the schedule says {expected}"


def _state_copy(state: dict) -> dict:
    """``state`` through torch.save and a weights-only load, as a checkpoint keeps it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.mpi
@pytest.mark.parametrize("kind", KINDS)
def test_add_param_group_equals_the_group_given_at_construction(kind):
    runs = []
    for late in (False, True):
        net = model()
        weight, bias = net.weight, net.bias
        groups = [{"params": [weight]}] + ([] if late else [{"params": [bias], "lr": 0.03}])
        reducer, optimizer = build(kind, net, WORLD, groups=groups)
        if late:
            optimizer.add_param_group({"params": [bias], "lr": 0.03})
        for step in range(STEPS):
            train_step(net, reducer, optimizer, step, RANK)
        runs.append((flat(net), [g["lr"] for g in optimizer.param_groups]))
        reducer.close()
    (early, early_lrs), (late, late_lrs) = runs
    moved = not torch.equal(early, flat(model()))
    assert all_ranks_agree(torch.equal(early, late) and early_lrs == late_lrs == [0.1, 0.03] and moved)


@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["zero1", "zero2"])
def test_zero_steps_only_once_every_parameter_is_in_a_group(kind):
    net = model()
    reducer, optimizer = build(kind, net, WORLD, groups=[{"params": [net.weight]}])
    with pytest.raises(ValueError, match="1 trainable parameters are in no group"):
        train_step(net, reducer, optimizer, 0, RANK)  # raises on every rank alike, before any collective
    reducer.close()


@pytest.mark.mpi
@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_zero_grad_sets_to_none_or_zeroes(kind, set_to_none):
    net = model()
    reducer, optimizer = build(kind, net, WORLD)
    for step in range(STEPS):
        train_step(net, reducer, optimizer, step, RANK)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    had = sum(p.grad is not None for p in params)
    optimizer.zero_grad(set_to_none=set_to_none)
    grads = [p.grad for p in params]
    reducer.close()
    if set_to_none:
        ok = all(g is None for g in grads)
    else:
        ok = sum(g is not None for g in grads) == had and all(g is None or not g.any() for g in grads)
    assert all_ranks_agree(ok and had > 0), f"{had} gradients before; after: {grads}"


@pytest.mark.mpi
@pytest.mark.parametrize("kind", KINDS)
def test_a_state_dict_round_trip_gives_the_same_next_step(kind):
    net = model()
    reducer, optimizer = build(kind, net, WORLD)
    for step in range(STEPS):
        train_step(net, reducer, optimizer, step, RANK)
    saved, weights = _state_copy(optimizer.state_dict()), _state_copy(net.state_dict())
    train_step(net, reducer, optimizer, STEPS, RANK)
    reducer.close()
    again = model(seed=1)  # other weights, and a fresh optimizer: everything comes from the state
    again.load_state_dict(weights)
    reducer, optimizer = build(kind, again, WORLD)
    optimizer.load_state_dict(saved)
    train_step(again, reducer, optimizer, STEPS, RANK)
    reducer.close()
    assert all_ranks_agree(torch.equal(flat(net), flat(again)))


OLD_STATES = os.path.join(os.path.dirname(__file__), "..", "data", "optimizer_states_0ecf9af.pt")


@pytest.mark.mpi
@pytest.mark.parametrize("kind", KINDS)
def test_a_state_dict_written_by_ringtrain_0ecf9af_gives_the_step_it_gave(kind):
    """tests/scripts/write_old_optimizer_states.py wrote the state (one rank) with the optimizers of 0ecf9af,
    before they were torch optimizers, and the parameters the next step gave there."""
    old = torch.load(OLD_STATES, weights_only=True)[kind]
    net = model(seed=1)
    net.load_state_dict(old["model"])
    reducer, optimizer = build(kind, net, MPI.COMM_SELF)
    optimizer.load_state_dict(old["optimizer"])
    train_step(net, reducer, optimizer, WARMUP + 1, 0)
    reducer.close()
    assert all_ranks_agree(torch.equal(flat(net), old["next"]))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("given, warning", [
    (dict(optimizer="onebit-adam"), "1-bit Adam's error-feedback residuals were saved for 2 ranks; at 1 they start "
                                    "from zero"),
    (dict(compression="dgc:ratio=0.05,momentum=0.9,masking=0"), "DGC's per-rank velocity was saved for 2 ranks; "
                                                                 "at 1 every rank continues from rank 0's")])
def test_per_rank_state_resumes_at_another_world_size_with_a_warning(corpus, mpi_tmp_path, capsys,  # noqa: F811
                                                                     given, warning):
    """Saved at 2 ranks past the freeze, resumed at 1: rank 0's state, and the optimizer says what it dropped."""
    common = dict(TINY, steps=6, batch_size=2, onebit_warmup=2, data=corpus, checkpoint_dir=str(mpi_tmp_path / "c"),
                  out_dir=out_dir(mpi_tmp_path / f"o{RANK}"), **given)
    two = WORLD.Split(0 if RANK < 2 else MPI.UNDEFINED, RANK)
    if two != MPI.COMM_NULL:
        with pytest.raises(Preempted):
            train(TrainConfig(**common, stop_after=4), comm=two)
        two.Free()
    WORLD.Barrier()
    capsys.readouterr()
    ok, said = True, ""
    if RANK == 0:
        try:
            resumed = train(TrainConfig(**common), comm=MPI.COMM_SELF)
        except Exception as e:  # decided with the other ranks below: raised here, it would leave them waiting
            resumed, said = None, repr(e)
        said += capsys.readouterr().out
        ok = (resumed is not None and resumed["start_step"] == 4 and len(resumed["losses"]) == 2
              and warning in said and resumed["optimizer"].steps == 6)
    assert all_ranks_agree(ok), said
