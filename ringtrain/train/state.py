"""What a checkpoint holds, and putting it back.

Replicated (rank 0 writes it): model, optimizer, the step, the config. Per
rank: torch's RNG state (and, with compression, its residuals; with --zero,
its optimizer shard: optim/checkpoint.py). The learning
rate and the data position follow from the step, since batches are drawn from
(seed, step), so restoring these makes a resumed run continue bit for bit.
That holds only on the same data: the replicated state also records the
corpus's fingerprint (data/fingerprint.py), and ``check_data`` refuses a resume
on data whose content differs, whatever path names it.
"""
import dataclasses
import os
import sys

import torch
from mpi4py import MPI

from .. import checkpoint
from ..data.fingerprint import differences
from ..fault.errors import UsageError, agree
from ..optim import checkpoint as optimizer_checkpoint
from .config import TrainConfig
from .tuned import Tuned

# Changing these between a run and its resume would change what is computed.
# (--steps may grow: that only stretches the learning-rate schedule from here on.) Not --data: the data's
# fingerprint decides (check_data), so that ./a.txt is a.txt, and a changed a.txt is not.
_MUST_MATCH = ("model", "layers", "heads", "width", "context", "seed", "optimizer", "batch_size", "accumulate",
               "lr", "min_lr_ratio", "warmup", "momentum", "weight_decay", "grad_clip", "compression",
               "bucket_cap_mb", "last_batch", "onebit_warmup")


def save(cfg: TrainConfig, step: int, model, optimizer, reducer, comm: MPI.Comm, lineage: str, tuned: Tuned,
         data: dict | None = None) -> str:
    """``tuned``: what the run chose for its auto settings (compression, bucket cap, optimizer), kept for the
    resume. ``data``: the corpus's fingerprint (the source's ``fingerprint``; None for a task's datasets)."""
    if hasattr(reducer, "whole_state"):  # ZeRO-3, pipeline stages: what --zero 0 writes, whole tensors
        weights, whole_optimizer = reducer.whole_state(optimizer)
        shared, own = {"optimizer": whole_optimizer}, {}
    else:
        weights, (shared, own) = model.state_dict(), optimizer_checkpoint.parts(model, optimizer)
    replicated = {"model": weights, **shared, "step": step, "config": _as_saved(cfg),
                  "tuned": tuned.saved(), "data": data}
    per_rank = {"torch_rng": torch.get_rng_state(), "reducer": reducer.state_dict(), **own}
    return checkpoint.save(cfg.checkpoint_dir, step, replicated, per_rank, comm, keep=cfg.keep_checkpoints,
                           lineage=lineage)


def _locate(cfg: TrainConfig, comm: MPI.Comm):
    """(path, manifest) of the checkpoint to resume from, or (None, None). Collective."""
    if cfg.resume == "none":
        return None, None
    if cfg.resume == "auto":
        if not cfg.checkpoint_dir:
            return None, None
        return checkpoint.find_latest(cfg.checkpoint_dir, comm)
    else:
        path, error = cfg.resume, None
        manifest = None
        if comm.Get_rank() == 0:
            try:
                manifest = checkpoint.loadable(path)
            except checkpoint.CheckpointError as e:
                error = str(e)
        error, manifest = comm.bcast((error, manifest), root=0)
        if error:
            raise UsageError(f"--resume {path}: this checkpoint cannot be loaded: {error} — give auto, none, or "
                             "the path of an intact step-* directory", agreed=True)
        return path, manifest


def check_data(cfg: TrainConfig, fingerprint: dict, comm: MPI.Comm) -> None:
    """Refuse, on every rank, to resume from a checkpoint trained on other data than ``fingerprint``. Collective.

    With ``--data-changed ok`` a change is a one-line warning instead. A
    checkpoint from before fingerprints is resumed with a one-line note. Rank
    0 reads the checkpoint's fingerprint and decides; every rank raises alike.
    """
    path, manifest = _locate(cfg, comm)
    if path is None:
        return
    error = None
    if comm.Get_rank() == 0:
        # The checkpoint was verified by _locate, in this process; mmap reads only the pickle, not the tensors.
        saved = torch.load(os.path.join(path, "replicated.pt"), mmap=True, weights_only=True).get("data")
        shown = cfg.data if cfg.data is not None else fingerprint["root"]
        changed = differences(saved, fingerprint, shown) if saved is not None else []
        if saved is None:
            print(f"ringtrain: note: {path} records no data fingerprint (it predates them): resuming without "
                  "checking that the data is the same", file=sys.stderr, flush=True)
        elif changed and cfg.data_changed == "ok":
            print(f"ringtrain: warning: --data {shown}: changed since {path} was written ({'; '.join(changed)}); "
                  "training on it as it is now (--data-changed ok)", file=sys.stderr, flush=True)
        elif changed:
            more = f"; and {len(changed) - 4} more" if len(changed) > 4 else ""
            error = (f"--data {shown}: changed since {path} was written: {'; '.join(changed[:4])}{more} — resume "
                     "on the data it was trained on, pass --data-changed ok to train on the data as it is now, or "
                     "--resume none to start afresh")
    agree(comm, error)


def saved_tuning(cfg: TrainConfig, comm: MPI.Comm) -> Tuned | None:
    """What an autotuned run chose, from the checkpoint it resumes: a resumed run must not choose anew."""
    path, manifest = _locate(cfg, comm)
    if path is None:
        return None
    saved = checkpoint.load_part(path, "replicated.pt", manifest).get("tuned")
    return None if saved is None else Tuned.from_saved(saved)


def restore(cfg: TrainConfig, model, optimizer, reducer, comm: MPI.Comm) -> tuple[int, str]:
    """Load the checkpoint ``cfg.resume`` names into model and optimizer. Collective.

    Returns its step and lineage, or (0, a new lineage) when the run starts
    afresh. A fresh start (``--resume none``) in a directory that holds
    checkpoints first moves them into ``superseded-<time>/`` (rank 0): kept,
    but out of the way of this run's resumes.
    """
    path, manifest = _locate(cfg, comm)
    if path is None:
        if cfg.resume == "none" and cfg.checkpoint_dir and comm.Get_rank() == 0:
            moved = checkpoint.supersede(cfg.checkpoint_dir)
            if moved:
                print(f"ringtrain: --resume none: the checkpoints already in {cfg.checkpoint_dir} were moved to "
                      f"{moved} (nothing deleted)", file=sys.stderr, flush=True)
        return 0, comm.bcast(checkpoint.new_lineage(), root=0)
    state = checkpoint.load_part(path, "replicated.pt", manifest)
    _check_config(state["config"], cfg, path)
    error = None
    try:
        if hasattr(reducer, "load_whole_state"):
            _load_whole(state, reducer, optimizer)
        else:
            model.load_state_dict(state["model"])
            optimizer_checkpoint.load(path, manifest, state, model, optimizer, reducer, comm)
    except (RuntimeError, ValueError, KeyError, checkpoint.CheckpointError) as e:
        # Another model under the same flags (ringtrain.fit, --model), or a shard that does not fit. Sharded,
        # each rank reads other files, so the verdict is agreed before anyone raises.
        first = str(e).strip().splitlines()[0]
        error = (f"{path} holds another model's weights or optimizer state ({first}) — resume with the model "
                 "that wrote it, or pass resume='none' (--resume none) to start afresh")
    agree(comm, error)
    rank, world = comm.Get_rank(), comm.Get_size()
    name = checkpoint.rank_file(rank)
    if manifest["world_size"] == world:
        mine = checkpoint.load_part(path, name, manifest)
        torch.set_rng_state(mine["torch_rng"])
        reducer.load_state_dict(mine["reducer"])
    replicas_then = manifest["world_size"] // state["config"].get("pipeline_stages", 1)
    if manifest["world_size"] == world and replicas_then != world // cfg.pipeline_stages and rank == 0:
        print(f"ringtrain: warning: resuming with {world // cfg.pipeline_stages} data-parallel replicas from a "
              f"checkpoint written with {replicas_then} (--pipeline-stages changed): model and optimizer load as "
              "they are, and the data order changes with the replicas, so the run will not match an "
              "uninterrupted one bit for bit", file=sys.stderr, flush=True)
    if manifest["world_size"] != world and rank == 0:
        print(f"ringtrain: warning: resuming at world size {world} from a checkpoint written at "
              f"{manifest['world_size']}: model and optimizer load as they are, per-rank state (RNG, compression "
              "residuals) starts fresh, and the data order changes with the world size, so the run will "
              "not match an uninterrupted one bit for bit", file=sys.stderr, flush=True)
    return int(state["step"]), manifest.get("lineage") or comm.bcast(checkpoint.new_lineage(), root=0)


def _load_whole(state: dict, sync, optimizer) -> None:
    """A checkpoint of whole tensors (any --zero 0 or 3 or pipelined run's) into a decomposed model's parts."""
    if state.get("zero") is not None or state.get("optimizer") is None:
        raise ValueError("its optimizer state is sharded (--zero 1 or 2) or per rank (1-bit Adam), which --zero 3 "
                         "and pipeline stages do not read: join a ZeRO-1/2 checkpoint into one with python -m "
                         "ringtrain consolidate")
    sync.load_whole_state(state["model"], state["optimizer"], optimizer)


def _as_saved(cfg: TrainConfig) -> dict:
    """The config as a checkpoint keeps it: plain values (a Compressor object by its name), loadable with
    weights_only=True."""
    return {**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, "compression": cfg.compression_name}


def _check_config(saved: dict, cfg: TrainConfig, path: str) -> None:
    now = _as_saved(cfg)
    # A field newer than the checkpoint was, in effect, at its default when it was written.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    was = {k: saved.get(k, defaults[k]) for k in _MUST_MATCH}
    changed = [f"{k}: {was[k]!r} -> {now[k]!r}" for k in _MUST_MATCH if was[k] != now[k]]
    if changed:
        # Every rank compares the same replicated state with the same flags: agreed.
        raise UsageError(f"{path} was written with a different configuration ({'; '.join(changed)}) — resume "
                         "with the same settings, or pass --resume none to start afresh", agreed=True)
