"""Write tests/data/optimizer_states_0ecf9af.pt: each optimizer's state_dict as ringtrain 0ecf9af wrote it.

    git worktree add /tmp/rt-0ecf9af 0ecf9af
    python tests/scripts/write_old_optimizer_states.py /tmp/rt-0ecf9af

(ringtrain from the old checkout, tests/optim_cases.py from this one.) For
each kind, on one rank: WARMUP + 1 steps (past the freeze), then the model
and the optimizer's state_dict, then one more step and the parameters it
gave. tests/mpi/test_optimizers.py loads the state into today's optimizer and
checks that the same step gives the same bits.
"""
import importlib.util
import io
import os
import sys

import torch
from mpi4py import MPI

HERE = os.path.dirname(os.path.abspath(__file__))


def main(old_checkout: str) -> None:
    sys.path.insert(0, old_checkout)
    import ringtrain
    assert os.path.dirname(ringtrain.__file__) == os.path.join(os.path.abspath(old_checkout), "ringtrain")
    spec = importlib.util.spec_from_file_location("optim_cases", os.path.join(HERE, "..", "optim_cases.py"))
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    KINDS, WARMUP, build, flat, model, train_step = (cases.KINDS, cases.WARMUP, cases.build, cases.flat,
                                                     cases.model, cases.train_step)
    out = {}
    for kind in KINDS:
        net = model()
        reducer, optimizer = build(kind, net, MPI.COMM_SELF)
        for step in range(WARMUP + 1):
            train_step(net, reducer, optimizer, step, 0)
        saved = {"model": {k: v.clone() for k, v in net.state_dict().items()}, "optimizer": optimizer.state_dict()}
        saved = torch.load(_bytes(saved), weights_only=True)  # a copy, as a checkpoint holds it
        train_step(net, reducer, optimizer, WARMUP + 1, 0)
        out[kind] = {**saved, "next": flat(net)}
        reducer.close()
    path = os.path.join(HERE, "..", "data", "optimizer_states_0ecf9af.pt")
    torch.save(out, path)
    print(f"wrote {path}: {os.path.getsize(path)} bytes")


def _bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


if __name__ == "__main__":
    main(sys.argv[1])
