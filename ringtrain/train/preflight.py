"""Checks before any work: every path and plug-in the run will need, on rank 0, with the verdict agreed.

Without them, an unwritable --checkpoint-dir was found only when the first
checkpoint was due (with the default --checkpoint-every 0: after the last
step, losing the whole run), and a missing --data file killed the job with a
traceback and an MPI abort. Here each problem becomes one UsageError, raised
on every rank (exit code 2) before the model is built.

Rank 0 also takes the locks of --out-dir and --checkpoint-dir here (places.py), and keeps them for the run.
"""
import importlib
import os
import uuid

from mpi4py import MPI

from ..fault.errors import UsageError, agree
from .config import TrainConfig
from .places import RunPlaces


def preflight(cfg: TrainConfig, comm: MPI.Comm, run: str = "", held: RunPlaces | None = None) -> RunPlaces:
    """Check ``cfg``'s paths and model on rank 0; every rank raises the same UsageError if one is bad. Collective.

    Returns the run's directory locks (held on rank 0; empty elsewhere). ``run``: this run's id, in the lock files.
    ``held``: locks this rank holds already (--elastic: a rank 0 that survived keeps them; a new rank 0 takes
    the dead one's over).
    """
    if held is not None and (held.out is not None or comm.Get_rank() != 0):
        agree(comm, None)  # checked when they were taken; the same collective as below, on every rank
        return held
    places, error = RunPlaces(), None
    if comm.Get_rank() == 0:
        try:
            check_data(cfg.data)
            check_model(cfg.model)
            probe_directory(cfg.out_dir, "--out-dir")
            if cfg.resume not in ("auto", "none") and not os.path.isdir(cfg.resume):
                raise UsageError(f"--resume {cfg.resume}: no such checkpoint directory — give auto, none, or the "
                                 "path of a step-* directory")
            if cfg.checkpoint_dir:
                probe_directory(cfg.checkpoint_dir, "--checkpoint-dir")
            places = RunPlaces(cfg.out_dir, cfg.checkpoint_dir, run=run)
        except UsageError as e:
            error = e
    agree(comm, error)
    return places


def check_data(data: str | None) -> None:
    """``data`` is None (the standard library), a non-empty regular file, or a directory with a file in it.

    The path itself only: a FIFO, socket or device given as --data is refused
    here by what it is. The files inside a directory are classified (a FIFO
    there is refused by name) when rank 0 lists them to build the token file,
    before it reads any, and every rank shares that verdict
    (corpus.open_tokens): doing it here too would stat every file twice.

    >>> check_data("/dev/null")
    Traceback (most recent call last):
    ringtrain.fault.errors.UsageError: --data /dev/null: it is a character device, not a regular file or a directory — give a text file, or a directory of them
    """
    from ..data.files import file_kind  # here, not at the top: this function is the data layer's part of the file

    if data is None:
        return
    if not os.path.exists(data):
        raise UsageError(f"--data {data}: no such file or directory — give a text file, or a directory of them")
    if os.path.isfile(data):
        if os.path.getsize(data) == 0:
            raise UsageError(f"--data {data}: the file is empty — give text to train on")
        return
    if not os.path.isdir(data):
        raise UsageError(f"--data {data}: it is {file_kind(os.stat(data).st_mode)}, not a regular file or a "
                         "directory — give a text file, or a directory of them")
    if not any(names for _, _, names in os.walk(data)):
        raise UsageError(f"--data {data}: the directory holds no files — give a text file, or a directory of them")


def check_model(model: str) -> None:
    """``gpt``, or ``module:function`` where the module imports and has that callable."""
    if model == "gpt":
        return
    module_name, _, function_name = model.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"--model {model}: cannot import {module_name} ({e}) — give gpt, or module:function "
                         "with the module on PYTHONPATH") from None
    if not callable(getattr(module, function_name, None)):
        raise UsageError(f"--model {model}: {module_name} has no function {function_name} — give gpt, or "
                         "module:function returning (model, loss_fn)")


def probe_directory(path: str, flag: str) -> None:
    """Create ``path`` if needed and prove a file can be written there (and removed again)."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".ringtrain-probe-{uuid.uuid4().hex[:8]}")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write there ({e.strerror or e}) — give a directory this user can "
                         "create and write") from None
