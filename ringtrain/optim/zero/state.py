"""ZeRO optimizer state at any world size: shards to pieces of the flat parameter space and back.

The flat parameter space is the trainable parameters in registration order,
each flattened; it does not depend on the number of ranks. A shard is saved
as pieces, each ``(param, start, numel, state)``: elements ``start ..
start + numel`` of parameter ``param``, with the optimizer's per-element state
tensors for exactly those elements and its per-parameter scalars (AdamW's
``step``). Loading cuts the saved pieces (from any number of ranks, or one
unsharded optimizer's ``state_dict``) to this rank's pieces, copying each
element's state from wherever it was saved: resharding loses nothing, and
``unsharded_state`` turns shards back into an ordinary torch state_dict.

>>> sources = {0: [(0, 4, {"step": 3, "m": torch.arange(4.0)}), (4, 2, {"step": 3, "m": torch.tensor([4.0, 5.0])})]}
>>> cut(sources, 0, 3, 2)
{'step': 3, 'm': tensor([3., 4.])}
"""
import torch

FORMAT = "ringtrain-zero-shard-1"


def per_element(value, numel: int) -> bool:
    """Whether optimizer state ``value`` has one entry per element of a ``numel``-element piece (AdamW's moments),
    rather than one per parameter (its step)."""
    return torch.is_tensor(value) and value.dim() > 0 and value.numel() == numel


def shard_state(opt) -> dict:
    """``opt``'s (a ZeroOptimizer's) state: its pieces with their places, and the group settings."""
    pieces = []
    for piece in opt.pieces:
        n = piece.tensor.numel()
        state = opt.state.get(piece.tensor, {})
        pieces.append({"param": piece.param, "start": piece.start, "numel": n,
                       "state": {k: (v.reshape(-1) if per_element(v, n) else v) for k, v in state.items()}})
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return {"format": FORMAT, "sizes": list(opt.sizes), "pieces": pieces, "groups": groups}


def gather(shards: list[dict]) -> dict[int, list]:
    """Every saved piece, by parameter: ``{param: [(start, numel, state), ...]}``."""
    sources = {}
    for shard in shards:
        if not isinstance(shard, dict) or shard.get("format") != FORMAT:
            raise ValueError("not a ringtrain ZeRO optimizer shard")
        for p in shard["pieces"]:
            sources.setdefault(p["param"], []).append((p["start"], p["numel"], p["state"]))
    return sources


def from_unsharded(state: dict, order: list[int], sizes: list[int]) -> dict[int, list]:
    """An unsharded optimizer's ``state_dict`` as pieces: one per parameter. ``order[i]`` is the trainable
    parameter that the optimizer's i-th parameter (counting through its groups) is."""
    sources = {}
    for i, k in enumerate(order):
        s = state["state"].get(i)
        if s:
            sources[k] = [(0, sizes[k], {key: (v.reshape(-1) if per_element(v, sizes[k]) else v)
                                         for key, v in s.items()})]
    return sources


def cut(sources: dict[int, list], param: int, start: int, numel: int) -> dict:
    """The state of elements ``start .. start + numel`` of ``param``, copied from the saved pieces.

    Empty if the parameter has no saved state (never stepped); ValueError if the pieces cover it only in part.
    """
    parts = sources.get(param)
    if not parts:
        return {}
    out, covered = {}, 0
    for lo, n, state in parts:
        a, b = max(start, lo), min(start + numel, lo + n)
        if a >= b:
            continue
        covered += b - a
        for key, value in state.items():
            if per_element(value, n):
                if key not in out:
                    out[key] = torch.empty(numel, dtype=value.dtype)
                out[key][a - start:b - start] = value[a - lo:b - lo]
            elif key not in out:  # per parameter (AdamW's step): the same in every piece of it
                out[key] = value.clone() if torch.is_tensor(value) else value
    if covered != numel:
        raise ValueError(f"the saved optimizer state covers {covered} of the {numel} elements of parameter "
                         f"{param} from {start}: the shards are incomplete")
    return out


def load_shard(opt, state) -> None:
    """Load ``state`` (one shard, every rank's shards, or an unsharded state_dict) into ZeroOptimizer ``opt``'s
    pieces."""
    if isinstance(state, dict) and state.get("format") == FORMAT:
        state = [state]
    if isinstance(state, dict) and "param_groups" in state and "state" in state:
        order = [k for group in opt.group_order for k in group]
        sources, groups = from_unsharded(state, order, opt.sizes), state["param_groups"]
    else:
        shards = list(state)
        sources, groups = gather(shards), shards[0]["groups"]
        if shards[0]["sizes"] != list(opt.sizes):
            raise ValueError("the saved optimizer shards belong to a model with other parameters")
    if len(groups) != len(opt.param_groups):
        raise ValueError(f"the saved optimizer has {len(groups)} parameter groups, this one {len(opt.param_groups)}")
    for mine, saved in zip(opt.param_groups, groups):
        mine.update({k: v for k, v in saved.items() if k != "params"})
    for piece in opt.pieces:
        s = cut(sources, piece.param, piece.start, piece.tensor.numel())
        if s:
            opt.state[piece.tensor] = s
        else:
            opt.state.pop(piece.tensor, None)


def unsharded_state(shards: list[dict], params: list[torch.Tensor], group_order: list[list[int]]) -> dict:
    """An ordinary torch optimizer state_dict from every rank's shards: ``params`` are the trainable parameters
    (for their shapes), ``group_order`` the trainable parameters of each group in the optimizer's order."""
    sources = gather(shards)
    groups = shards[0]["groups"]
    state, index = {}, 0
    out_groups = []
    for group, members in zip(groups, group_order):
        ids = []
        for k in members:
            s = cut(sources, k, 0, params[k].numel())
            if s:
                state[index] = {key: (v.reshape(params[k].shape) if per_element(v, params[k].numel()) else v)
                                for key, v in s.items()}
            ids.append(index)
            index += 1
        out_groups.append({**group, "params": ids})
    return {"state": state, "param_groups": out_groups}
