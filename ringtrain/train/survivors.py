"""Where the survivors of a dead rank start from (--elastic): memory, the shard copies, or the newest checkpoint.

- ``--zero 0``: the model and optimizer are whole on every survivor; the
  committed step's are taken from memory, and only the failed step is redone.
- ``--zero 1/2`` with ``--shard-recovery copy`` (the default): the dead
  rank's optimizer shard is rebuilt from the copy the next rank kept
  (elastic/shard_copies.py), resharded for the survivors; again only the
  failed step is redone.
- ``--shard-recovery checkpoint``, or copies that do not cover the state (a
  rank and the next died together): the survivors go back to the newest
  checkpoint, resharded for their number as any resume at another size is,
  and redo the steps since. Without one, the job stops (exit code 76).
"""
import dataclasses

from ..checkpoint import find_latest
from ..elastic import shard_copies
from ..fault.errors import OneLineError
from ..fault.exit_codes import EXIT_TIMEOUT
from . import state


class StateLost(OneLineError):
    """The dead ranks' shards are lost and no checkpoint holds the run: the job stops (exit code 76, as a dead rank
    without --elastic)."""

    exit_code = EXIT_TIMEOUT


def resume(cfg, carried, model, optimizer, sync, comm) -> tuple[int, str, str]:
    """(the step to go on from, the lineage, why it is not the committed step from memory or ""), with model and
    optimizer loaded for it. Collective."""
    model.zero_grad(set_to_none=True)  # the failed step's partial gradients
    if not cfg.zero:
        optimizer.load_state_dict(carried.optimizer.state_dict())
        return carried.step, carried.lineage, ""
    carried.optimizer = None  # the old ring's ZeroOptimizer and its flat parameters: not needed under ZeRO
    why = "--shard-recovery is checkpoint"
    if cfg.shard_recovery == "copy":
        why = shard_copies.recover(carried.shards, carried.step, optimizer, comm)
        if not why:
            return carried.step, carried.lineage, ""
    path, manifest = find_latest(cfg.checkpoint_dir, comm) if cfg.checkpoint_dir else (None, None)
    if path is None or manifest["step"] > carried.step or manifest.get("lineage") != carried.lineage:
        found = ("there is no checkpoint to go back to" if path is None else
                 f"the newest checkpoint ({path}) is not one this run wrote by step {carried.step}")
        raise StateLost(f"{why}, and {found}; the job stops", agreed=True)
    start, lineage = state.restore(dataclasses.replace(cfg, resume=path), model, optimizer, sync, comm)
    model.zero_grad(set_to_none=True)
    return start, lineage, why
