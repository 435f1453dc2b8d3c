"""GradientReducer's arguments, checked before it does anything: no collective, thread or hook yet.

Each check names the argument, the value and what is allowed. The
compression spec is checked where it is parsed (``compression.get``), and
ZeRO's compatibility with it by compression/compatibility.py, still before
the first collective.
"""
import torch
from mpi4py import MPI

from .. import environment
from ..checks import boolean, number, switch, whole

_POLL_SLEEP = number(0, 1e6, below=True)
_MEGABYTES = number(0, above=True)
_SWITCH, _BOOLEAN = switch(), boolean()


def poll_sleep_us_of(value: float | None) -> float:
    """The sleep between polls in microseconds: ``value``, else RINGTRAIN_POLL_SLEEP_US, else the default."""
    allowed = f"microseconds between polls, {_POLL_SLEEP.allowed} (0 spins)"
    if value is not None:
        if not _POLL_SLEEP.allows(value):
            raise ValueError(f"poll_sleep_us is not allowed — {allowed}; got {value!r}")
        return float(value)
    # The same rule, and constants.POLL_SLEEP_US when unset (environment.py); a UsageError (a ValueError) if bad.
    return environment.value("RINGTRAIN_POLL_SLEEP_US")


def check_arguments(model, *, bucket_cap_mb, comm, broadcast_from, node_aware, first_bucket_mb, broadcast_buffers,
                    zero) -> None:
    """Raise ValueError (RuntimeError for MPI's thread level) naming the first argument that is not allowed.

    Local: no collective, so a bad argument given to every rank raises on every rank with nothing pending.

    >>> check_arguments(torch.nn.Linear(2, 2), bucket_cap_mb=25, comm=None, broadcast_from=0, node_aware=True,
    ...                 first_bucket_mb=None, broadcast_buffers=True, zero=0)
    Traceback (most recent call last):
    ...
    ValueError: node_aware=True is not allowed — one of auto, on, off (write 'on'; earlier versions took True/False/None)
    """
    level = MPI.Query_thread()
    if level < MPI.THREAD_SERIALIZED:
        raise RuntimeError("GradientReducer makes MPI calls from a communication thread and needs "
                           f"MPI_THREAD_SERIALIZED or higher; MPI was initialised with level {level}. "
                           "mpi4py asks for MPI_THREAD_MULTIPLE unless mpi4py.rc.thread_level says otherwise")
    if isinstance(model, (list, tuple)):
        kinds = sorted({type(p).__name__ for p in model if not isinstance(p, torch.Tensor)})
        if kinds:
            raise ValueError(f"model is not allowed — a torch.nn.Module or a list of parameters (tensors); the list "
                             f"holds {', '.join(kinds)}")
        if len({id(p) for p in model}) != len(model):
            raise ValueError("model is not allowed — a list of parameters must name each parameter once")
    elif not isinstance(model, torch.nn.Module):
        raise ValueError(f"model is not allowed — a torch.nn.Module or a list of parameters; got "
                         f"{type(model).__name__}")
    for p in model.parameters() if isinstance(model, torch.nn.Module) else model:
        if p.requires_grad and p.device.type != "cpu":
            raise ValueError(f"GradientReducer works on CPU tensors; a parameter is on {p.device}")
    if not _MEGABYTES.allows(bucket_cap_mb):
        raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb!r}")
    if first_bucket_mb is not None and not _MEGABYTES.allows(first_bucket_mb):
        raise ValueError(f"first_bucket_mb must be > 0 (or None: as bucket_cap_mb), got {first_bucket_mb!r}")
    if comm is not None and not isinstance(comm, MPI.Intracomm):
        raise ValueError(f"comm={comm!r} is not allowed — an mpi4py intracommunicator, or None (COMM_WORLD)")
    size = (MPI.COMM_WORLD if comm is None else comm).Get_size()
    if broadcast_from is not None and not whole(0, size - 1).allows(broadcast_from):
        raise ValueError(f"broadcast_from={broadcast_from!r} is not allowed — a rank from 0 to {size - 1}, or "
                         "None (no broadcast)")
    if not _SWITCH.allows(node_aware):
        was = {None: "auto", True: "on", False: "off"}.get(node_aware) if node_aware in (None, True, False) else None
        raise ValueError(f"node_aware={node_aware!r} is not allowed — {_SWITCH.allowed}"
                         + (f" (write {was!r}; earlier versions took True/False/None)" if was else ""))
    if not _BOOLEAN.allows(broadcast_buffers):
        raise ValueError(f"broadcast_buffers={broadcast_buffers!r} is not allowed — True or False")
    if zero not in (0, 1, 2) or isinstance(zero, bool):
        raise ValueError(f"zero={zero!r} is not allowed — 0 (allreduce), 1 (shard the optimizer state) or 2 "
                         "(and the gradients)")
