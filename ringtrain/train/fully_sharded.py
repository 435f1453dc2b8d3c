"""ZeRO-3 for the training loop: torch's FSDP2 ``fully_shard`` over the ringtrain backend.

Each layer of every ``nn.ModuleList`` in the model (the GPT's blocks) becomes
one FSDP2 group, and the root group holds the rest: the embeddings, the final
norm and the head, which the GPT ties to the token embedding (a tied weight
lives in one group, so it stays one parameter). A group's parameters are
gathered just before its forward and its backward and freed after each
(``reshard_after_forward``); the next block's gather is issued while this one
computes (explicit prefetch, both ways), so a rank holds its 1/N shards plus
about two blocks' whole parameters. Gradients are reduce-scattered in backward,
so ``synchronize`` has nothing left to wait for.

This plugs into the loop where the GradientReducer does (train/sync.py):
forward runs on the sharded model itself, and ``no_sync`` turns FSDP2's
gradient reduction off for all but a step's last micro-batch.
"""
import contextlib

import torch
import torch.distributed as dist
from mpi4py import MPI

from . import full_state
from .torch_distributed import ensure_started

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that get a group of their own: every layer of every ModuleList, outermost lists first."""
    found, seen = [], set()
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and id(module) not in seen:
            for layer in module:
                if not any(id(m) in seen for m in layer.modules()):
                    found.append(layer)
                    seen.update(id(m) for m in layer.modules())
    return found


_made: dict[str, tuple] = {}


def _group(backend: str):
    """One group of ``backend`` over all ranks per torch.distributed session, reused by every later run (a
    trained model's shards keep theirs, so runs cannot destroy them). Collective the first time."""
    made = _made.get(backend)
    if made is None or made[0] is not dist.group.WORLD:  # none yet, or torch.distributed was restarted since
        made = _made[backend] = (dist.group.WORLD, dist.new_group(backend=backend))
    return made[1]


class FullyShardedSync:
    """The GradientSync of ``--zero 3``: shards ``model`` in place with FSDP2 over the ranks of ``comm``.

    ``comm`` must hold every rank of COMM_WORLD (torch_distributed.py). If
    torch.distributed was running already, a new group of ``backend``
    (ringtrain by default; gloo for the peer) is made over all ranks. Collective.
    """

    last_comm_seconds = None  # FSDP2's gathers and reduce-scatters run inside forward and backward
    last_wire_bytes = None

    def __init__(self, model: torch.nn.Module, comm: MPI.Comm, *, param_dtype: str = "fp32",
                 reduce_dtype: str = "fp32", backend: str = "ringtrain"):
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        started = ensure_started(comm, "--zero 3", "--zero 2")
        self.group = dist.group.WORLD if started and backend == "ringtrain" else _group(backend)
        mesh = DeviceMesh.from_group(self.group, "cpu")
        # Every rank shards its own copy: they must start as rank 0's, as the reducer's broadcast makes them.
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t, src=dist.get_global_rank(self.group, 0), group=self.group)
        policy = MixedPrecisionPolicy(param_dtype=DTYPES[param_dtype], reduce_dtype=DTYPES[reduce_dtype])
        blocks = layers(model)
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        for before, after in zip(blocks, blocks[1:]):
            before.set_modules_to_forward_prefetch([after])
            after.set_modules_to_backward_prefetch([before])
        self.model = model
        self.groups = len(blocks) + 1

    @contextlib.contextmanager
    def no_sync(self):
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    def synchronize(self) -> None:
        """Nothing to wait for: FSDP2 reduce-scattered each group's gradients during backward."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def whole_state(self, optimizer) -> tuple[dict, dict]:
        """(model, optimizer) state_dicts of whole tensors, as --zero 0 writes them (full_state.py). Collective."""
        return full_state.model_state(self.model), full_state.optimizer_state(optimizer)

    def load_whole_state(self, model_state: dict, optimizer_state: dict, optimizer) -> None:
        full_state.load_model_state(self.model, model_state)
        full_state.load_optimizer_state(optimizer, optimizer_state)

    def close(self) -> None:
        """Nothing: torch.distributed and the group stay up, because the trained model's shards still need them
        to be gathered (``full_tensor``, ``state_dict``) or run after ``fit`` returns."""
