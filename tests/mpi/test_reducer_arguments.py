"""A bad GradientReducer argument raises on every rank and leaves nothing behind.

No thread, no hook on the parameters or the model, and nothing pending between
the ranks: the collectives that follow (MPI's own, and ringtrain's allreduce
with its handshake on the private communicator) still match, at any world size.
"""
import threading

import pytest
import torch
from mpi4py import MPI

import ringtrain
from ringtrain import GradientReducer
from tests.helpers import all_ranks_agree

WORLD = MPI.COMM_WORLD

BAD = [({"bucket_cap_mb": 0}, "bucket_cap_mb must be > 0"),
       ({"bucket_cap_mb": "25"}, "bucket_cap_mb must be > 0"),
       ({"first_bucket_mb": -1}, "first_bucket_mb must be > 0"),
       ({"compression": "int9"}, "unknown compressor 'int9'"),
       ({"compression": 8}, "expected a spec string"),
       ({"zero": 3}, "zero=3 is not allowed"),
       ({"zero": 1, "compression": "ef+int8"}, "with ZeRO: not supported yet"),
       ({"node_aware": True}, "node_aware=True is not allowed — one of auto, on, off"),
       ({"node_aware": "yes"}, "node_aware='yes' is not allowed"),
       ({"broadcast_buffers": "on"}, "broadcast_buffers='on' is not allowed — True or False"),
       ({"broadcast_from": WORLD.Get_size()}, f"broadcast_from={WORLD.Get_size()} is not allowed"),
       ({"poll_sleep_us": -1}, "poll_sleep_us is not allowed"),
       ({"comm": "world"}, "comm='world' is not allowed"),
       ({"model": "a model"}, "model is not allowed — a torch.nn.Module")]


def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))


def hooks(m: torch.nn.Module) -> int:
    """Hooks a reducer would leave: post-accumulate-grad on the parameters, forward pre-hooks on the model."""
    grads = sum(len(p._post_accumulate_grad_hooks or {}) for p in m.parameters())
    return grads + len(m._forward_pre_hooks)


@pytest.mark.mpi
@pytest.mark.parametrize("bad, words", BAD, ids=[",".join(f"{k}={v!r}" for k, v in b.items()) for b, _ in BAD])
def test_a_bad_argument_raises_everywhere_and_leaves_nothing(bad, words):
    m = model()
    threads = set(threading.enumerate())
    options = {"model": m, **bad}
    raised = None
    try:
        reducer = GradientReducer(options.pop("model"), **options)
        reducer.close()
    except ValueError as e:
        raised = str(e)
    left = set(threading.enumerate()) - threads
    # Nothing pending: MPI's allreduce, then ringtrain's (a handshake on the private communicator first).
    total = WORLD.allreduce(WORLD.Get_rank() + 1)
    mean = ringtrain.allreduce(torch.full((5,), float(WORLD.Get_rank())), op="mean")
    n = WORLD.Get_size()
    ok = raised is not None and words in raised and not left and hooks(m) == 0
    ok &= total == n * (n + 1) // 2 and torch.equal(mean, torch.full((5,), (n - 1) / 2))
    assert all_ranks_agree(ok), (raised, left, hooks(m))


@pytest.mark.mpi
def test_a_good_reducer_does_leave_its_thread_and_hooks_until_closed():
    """The same checks see what a reducer leaves, so they can fail: one built right has them until close()."""
    m = model()
    threads = set(threading.enumerate())
    reducer = GradientReducer(m)
    during = (len(set(threading.enumerate()) - threads), hooks(m))
    reducer.close()
    after = (len(set(threading.enumerate()) - threads), hooks(m))
    expected = (1, sum(1 for _ in m.parameters()) + 1) if WORLD.Get_size() > 1 else (0, 0)
    assert all_ranks_agree(during == expected and after == (0, 0)), (during, after, expected)
