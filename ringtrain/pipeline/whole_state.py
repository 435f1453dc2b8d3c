"""A pipelined run's checkpoint in the unsharded format: the whole GPT's state_dict and its optimizer's.

Each parameter has one name, the unsharded GPT's (the tied matrix is
``tok.weight``, and ``head.weight`` in the state_dict beside it), and one
index in the unsharded optimizer: matrices first, then vectors, each in the
GPT's order, as ``make_optimizer`` groups them. A stage's optimizer holds
its parameters in the same relative order, so its indices map onto those.
The first replica's ranks send what they hold to rank 0, which writes; a
run at any other layout (or none) reads the same file and takes its part.
"""
import torch
from mpi4py import MPI

from ..model import GPT, GPTConfig


class Unsharded:
    """The unsharded GPT's state_dict keys, and its optimizer's parameter names by index (``order``) with
    ``matrices`` of them in the first group; from a GPT on the meta device, which holds no memory."""

    def __init__(self, cfg: GPTConfig):
        with torch.device("meta"):
            gpt = GPT(cfg)
        named = list(gpt.named_parameters())
        self.keys = list(gpt.state_dict().keys())
        self.order = [n for n, p in named if p.dim() >= 2] + [n for n, p in named if p.dim() < 2]
        self.matrices = sum(1 for _, p in named if p.dim() >= 2)


class Names:
    """This rank's parameters by their unsharded names, and their indices in both optimizers."""

    def __init__(self, gpt, stages, optimizer, unsharded: Unsharded):
        mine = {id(p) for stage in stages for p in stage.parameters()}
        self.params = {n: p for n, p in gpt.named_parameters() if id(p) in mine}  # the tied one once: tok.weight
        local = [p for group in optimizer.param_groups for p in group["params"]]
        by_id = {id(p): n for n, p in self.params.items()}
        self.local_names = [by_id[id(p)] for p in local]
        self.index = {n: i for i, n in enumerate(unsharded.order)}
        self.unsharded = unsharded


def gather_state(names: Names, optimizer, first_replica: bool, comm: MPI.Comm) -> tuple[dict, dict] | None:
    """(model state_dict, optimizer state_dict) of the whole GPT on rank 0; None elsewhere. Collective."""
    saved = optimizer.state_dict()
    part = None
    if first_replica:  # the first replica's ranks hold every stage once
        weights = {n: p.detach().clone() for n, p in names.params.items()}
        state = {names.index[names.local_names[i]]: s for i, s in saved["state"].items()}
        part = (weights, state, saved["param_groups"])
    parts = comm.gather(part, root=0)
    if comm.Get_rank() != 0:
        return None
    weights, state = {}, {}
    for p in parts:
        if p is not None:
            weights.update(p[0])
            state.update(p[1])
    weights["head.weight"] = weights["tok.weight"]  # tied: one matrix under both names, as the GPT's state_dict
    whole = names.unsharded
    groups = parts[0][2]  # every stage's groups carry the same settings: matrices, then vectors
    whole_groups = [dict(groups[0], params=list(range(whole.matrices))),
                    dict(groups[1], params=list(range(whole.matrices, len(whole.order))))]
    return {k: weights[k] for k in whole.keys}, {"state": dict(sorted(state.items())), "param_groups": whole_groups}


def load_state(names: Names, optimizer, model_state: dict, optimizer_state: dict) -> None:
    """This rank's part of an unsharded checkpoint into its stages and optimizer. Raises KeyError or RuntimeError
    as load_state_dict does."""
    with torch.no_grad():
        for n, p in names.params.items():
            if n not in model_state:
                raise KeyError(f"the checkpoint has no {n}")
            if model_state[n].shape != p.shape:
                raise RuntimeError(f"size mismatch for {n}: the checkpoint has {tuple(model_state[n].shape)}, "
                                   f"the model {tuple(p.shape)}")
            p.copy_(model_state[n])
    if len(optimizer_state["param_groups"]) != 2:
        raise ValueError("the checkpoint's optimizer has other parameter groups than the GPT's two")
    local = optimizer.state_dict()
    state = {}
    for i, n in enumerate(names.local_names):
        full = optimizer_state["state"].get(names.index[n])
        if full is not None:
            state[i] = full
    groups = [dict(saved, params=mine["params"]) for saved, mine in zip(optimizer_state["param_groups"],
                                                                         local["param_groups"])]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
