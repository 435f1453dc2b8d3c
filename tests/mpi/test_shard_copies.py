"""--elastic --zero 1/2's shard copies (ringtrain/elastic/shard_copies.py) without a death: every rank trains a few
ZeRO steps and swaps copies, then one rank (or two neighbours) is left out of a communicator of the others, as a
shrink would leave it. The others rebuild from the copies; the reference is every rank's real shard, gathered
before the split and resharded for the survivors by the checkpoint code's loader."""
import pytest
import torch
from mpi4py import MPI

import ringtrain
from ringtrain.elastic import shard_copies
from ringtrain.optim.zero.state import load_shard
from tests.helpers import all_ranks_agree

WORLD = MPI.COMM_WORLD


def model(seed, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 5)).to(dtype)


def zero(net, comm, stage):
    reducer = ringtrain.GradientReducer(net, comm=comm, zero=stage, bucket_cap_mb=0.0002)  # several buckets
    return reducer, ringtrain.ZeroOptimizer(reducer, torch.optim.AdamW, net.parameters(), lr=0.1)


def trained(stage, steps=3, dtype=torch.float32):
    """A ZeRO-``stage`` run of ``steps`` steps on every rank, its copies taken after each, as the loop does."""
    net = model(0, dtype)
    reducer, opt = zero(net, WORLD, stage)
    held = None
    for step in range(steps):
        torch.manual_seed(100 + 10 * step + WORLD.Get_rank())  # each rank its own batch
        net(torch.randn(4, 7, dtype=dtype)).square().mean().backward()
        reducer.synchronize()
        opt.step()
        opt.zero_grad(set_to_none=True)
        held = shard_copies.take(opt, WORLD, step + 1)
    return net, reducer, opt, held


def survivors_of(dead):
    return WORLD.Split(MPI.UNDEFINED if WORLD.Get_rank() in dead else 0, WORLD.Get_rank())


def state_of(opt):
    return [{k: v.clone() for k, v in opt.state.get(p.tensor, {}).items()} for p in opt.pieces]


# float64: AdamW's step stays float32, so the copies' buffers mix 8- and 4-byte entries.
@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("stage, dtype", [(1, torch.float32), (2, torch.float32), (1, torch.float64)])
def test_the_survivors_rebuild_the_dead_ranks_shard_from_its_copy(stage, dtype):
    n = WORLD.Get_size()
    net, reducer, opt, held = trained(stage, dtype=dtype)
    everything = WORLD.allgather(opt.state_dict())  # the reference: every rank's shard as it is
    whole = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    dead = n - 2  # its copy is on rank n - 1, the last
    comm = survivors_of({dead})
    ok = True
    if comm != MPI.COMM_NULL:
        fresh = model(1, dtype)  # other values everywhere: recover must write every one
        _, new = zero(fresh, comm, stage)
        _, reference = zero(model(1, dtype), comm, stage)
        load_shard(reference, everything)
        why = shard_copies.recover(held, 3, new, comm)
        ok = why == "" and torch.equal(torch.cat([p.detach().reshape(-1) for p in fresh.parameters()]), whole)
        mine, ref = state_of(new), state_of(reference)
        ok = ok and len(mine) == len(ref) and all(
            a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(mine, ref))
        ok = ok and all(len(s) == 3 for s in ref)  # AdamW's step and moments: the comparison is not of nothing
        comm.Free()
    assert all_ranks_agree(ok)


@pytest.mark.mpi(min_size=3)
def test_two_neighbours_dead_leave_the_copies_short_and_nothing_changed():
    net, reducer, opt, held = trained(1, steps=1)
    comm = survivors_of({0, 1})  # rank 0's copy was on rank 1
    ok = True
    if comm != MPI.COMM_NULL:
        fresh = model(1)
        before = [p.detach().clone() for p in fresh.parameters()]
        _, new = zero(fresh, comm, 1)
        why = shard_copies.recover(held, 1, new, comm)
        ok = why == "a rank and the next died together, taking both copies of an optimizer shard"
        ok = ok and all(torch.equal(a, b) for a, b in zip(before, fresh.parameters())) and not new.state
        comm.Free()
    assert all_ranks_agree(ok)


@pytest.mark.mpi(min_size=3)  # two survivors to disagree
def test_copies_of_different_steps_are_not_mixed():
    net, reducer, opt, held = trained(1, steps=1)
    if WORLD.Get_rank() == 0:
        held.step += 1  # as if this rank had committed a step the others had not
    comm = survivors_of({WORLD.Get_size() - 1})
    ok = True
    if comm != MPI.COMM_NULL:
        fresh = model(1)
        _, new = zero(fresh, comm, 1)
        why = shard_copies.recover(held, 1, new, comm)
        ok = why == "the shard copies are of steps [1, 2], not of step 1"
        comm.Free()
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_a_copy_unpacks_to_the_pieces_it_was_packed_from():
    net, reducer, opt, held = trained(2, steps=2)
    pieces = list(held.mine.pieces())
    ok = [(p, s, n) for p, s, n, _, _ in pieces] == [(q.param, q.start, q.tensor.numel()) for q in opt.pieces]
    for (_, _, _, value, copied), q in zip(pieces, opt.pieces):
        state = opt.state[q.tensor]
        ok = ok and torch.equal(value, q.tensor) and copied.keys() == state.keys()
        ok = ok and all(torch.equal(copied[k], state[k]) and copied[k].shape == state[k].shape for k in state)
        ok = ok and copied["step"].data_ptr() != state["step"].data_ptr()  # a copy: AdamW adds to its own in place
    # The previous rank's copy: its pieces, as it packed them (alone, none).
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    theirs = WORLD.sendrecv((held.mine.ranges(), held.mine.values, held.mine.state), dest=(r + 1) % n,
                            source=(r - 1) % n)
    ok = ok and (held.previous is None if n == 1 else held.previous.owner == (r - 1) % n
                 and held.previous.ranges() == theirs[0] and torch.equal(held.previous.values, theirs[1])
                 and torch.equal(held.previous.state, theirs[2]))
    assert all_ranks_agree(ok)


@pytest.mark.mpi(min_size=2)
def test_without_committed_copies_nothing_is_rebuilt():
    comm = survivors_of({0})
    ok = True
    if comm != MPI.COMM_NULL:
        fresh = model(1)
        _, new = zero(fresh, comm, 1)
        ok = shard_copies.recover(None, 0, new, comm) == (
            "the failure came before the first shard copies were committed")
        comm.Free()
    assert all_ranks_agree(ok)
