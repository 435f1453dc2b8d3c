"""Where the survivors of a dead rank start from (--elastic): memory, or the newest checkpoint under ZeRO.

Replicated state (--zero 0) is whole on every survivor: the model and
optimizer of the last committed step are taken from memory, and only the
step that failed is redone. Under --zero 1 and 2 each rank held a shard of
the optimizer state, and the dead rank's shard died with it; the survivors
go back to the newest checkpoint, resharded for their number as any resume
at another size is, and redo the steps since. (A buddy copy of each shard
would avoid that at the cost of sending every shard every step; not built.)
"""
import dataclasses

from . import state


def resume(cfg, carried, model, optimizer, sync, comm) -> tuple[int, str]:
    """(the step to go on from, the lineage), with model and optimizer loaded for it. Collective."""
    if not cfg.zero:
        optimizer.load_state_dict(carried.optimizer.state_dict())
        model.zero_grad(set_to_none=True)  # the failed step's partial gradients
        return carried.step, carried.lineage
    start, lineage = state.restore(dataclasses.replace(cfg, resume="auto"), model, optimizer, sync, comm)
    model.zero_grad(set_to_none=True)
    return start, lineage
