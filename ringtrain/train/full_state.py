"""A ZeRO-3 model's checkpoint in the unsharded format: whole tensors in, whole tensors out.

Saving gathers each sharded parameter and optimizer tensor (DTensor
``full_tensor``), one at a time, and rank 0 keeps them, so the checkpoint is what ``--zero 0`` writes: the
model's ``state_dict`` and the optimizer's, keyed by parameter index. That
is what makes a ZeRO-3 checkpoint resume at any world size and at ``--zero
0`` (and a ``--zero 0`` one at ``--zero 3``), bit for bit. Loading cuts each
rank's shard out of the whole tensor locally (``src_data_rank=None``): every
rank read the same file, so nothing needs to be sent.

Collective (the gathers), in the same order on every rank: ``state_dict``'s.
"""
import sys

import torch


def is_fully_sharded(model: torch.nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")  # never imported: nothing is sharded (and no import's cost)
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def _is_dtensor(t) -> bool:
    return hasattr(t, "full_tensor")


def _whole(t):
    return t.full_tensor() if _is_dtensor(t) else t


def _root() -> bool:
    import torch.distributed as dist
    return dist.get_rank() == 0


def model_state(model: torch.nn.Module) -> dict | None:
    """``model.state_dict()`` with every shard gathered into its whole tensor, on rank 0 (None elsewhere: each
    whole tensor is dropped there as soon as it is gathered, so no other rank ever holds the whole model). A
    tensor under two names (the GPT's tied head) is gathered once and kept as one. Collective."""
    keep, seen = _root(), {}
    out = {}
    for name, t in model.state_dict().items():
        if id(t) not in seen:
            whole = _whole(t).detach()
            seen[id(t)] = whole.clone() if keep else None
        out[name] = seen[id(t)]
    return out if keep else None


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict | None:
    """``optimizer.state_dict()`` with every sharded state tensor gathered, on rank 0 (None elsewhere). Collective."""
    keep = _root()
    saved = optimizer.state_dict()
    state = {}
    for i in sorted(saved["state"]):
        entries = {k: _whole(v) for k, v in saved["state"][i].items()}
        if keep:
            state[i] = entries
    return {"state": state, "param_groups": saved["param_groups"]} if keep else None


def _shard_like(whole: torch.Tensor, like) -> torch.Tensor:
    """This rank's part of ``whole``, placed as the DTensor ``like`` is; no communication."""
    from torch.distributed.tensor import distribute_tensor
    if tuple(whole.shape) != tuple(like.shape):
        raise RuntimeError(f"size mismatch: the checkpoint has {tuple(whole.shape)}, the model {tuple(like.shape)}")
    return distribute_tensor(whole.to(like.dtype), like.device_mesh, like.placements, src_data_rank=None)


@torch.no_grad()
def load_model_state(model: torch.nn.Module, whole: dict) -> None:
    """Copy the whole tensors of ``whole`` into ``model``'s shards. Raises RuntimeError as load_state_dict does."""
    target = model.state_dict()
    missing, unexpected = sorted(set(target) - set(whole)), sorted(set(whole) - set(target))
    if missing or unexpected:
        raise RuntimeError(f"Error(s) in loading state_dict: missing keys {missing[:5]}, unexpected keys "
                           f"{unexpected[:5]}")
    for name, t in target.items():
        if _is_dtensor(t):
            t.to_local().copy_(_shard_like(whole[name], t).to_local())
        else:
            t.copy_(whole[name])


def load_optimizer_state(optimizer: torch.optim.Optimizer, whole: dict) -> None:
    """Load an unsharded optimizer state into ``optimizer``, whose parameters are DTensor shards."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for i, entries in whole["state"].items():
        if not 0 <= int(i) < len(params):
            raise KeyError(f"optimizer state for parameter {i}, and the model has {len(params)}")
        p = params[int(i)]
        state[i] = {k: (_shard_like(v, p) if torch.is_tensor(v) and _is_dtensor(p) and v.dim() and
                        tuple(v.shape) == tuple(p.shape) else v) for k, v in entries.items()}
    optimizer.load_state_dict({"state": state, "param_groups": whole["param_groups"]})
