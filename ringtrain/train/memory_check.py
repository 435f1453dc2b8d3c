"""Memory before work: estimate each rank's peak and refuse a run that will not fit its node.

Without this, ``--batch-size 100000`` grew a rank to 12 GB until the OOM
killer ended the job (exit 9, no word from ringtrain), and ``--width 1000000``
died in a torch traceback while building the model.

Each rank's peak is estimated from its parts:

- parameters, their gradients (the reducer's buckets hold them; ZeRO-2
  shards them) and the optimizer's state (AdamW: two tensors per parameter,
  SGD with momentum one; ZeRO shards them);
- activations: the bytes autograd saves for backward, counted with
  ``saved_tensors_hooks`` in one forward at batch 1 (parameters themselves
  excluded), times ``--batch-size``, times BACKWARD_FACTOR for the gradients of
  those activations that backward holds at once;
- the corpus's batches: every rank draws the step's global batch (int64
  windows) before taking its rows, for the step in hand and the one prefetched;
- validation: every rank draws all ``--eval-windows`` windows, then runs its
  share through the model in one batch (no autograd: its live intermediates,
  INFERENCE_FACTOR of the saved bytes per window).

It is compared with what the node has: ``MemAvailable`` and the cgroup's
limit less its usage (Slurm confines jobs with one), divided among the ranks
on the node, or this process's address-space limit (``ulimit -v``) if lower. A run that does not fit is refused on every rank with one line
giving the numbers and the largest value of the dominant flag that fits
(exit code 2), unless ``--memory-check off``.
"""
import math
import os
import resource

import torch
from mpi4py import MPI

from ..fault.errors import UsageError
from .config import TrainConfig
from .task import Task, call

# Measured on the demo GPT (README): peak RSS grew by 1.22x the saved activations per training sample
# (batch 1-256), and by 0.16x of them per validation window (no autograd: only a few intermediates live at once).
BACKWARD_FACTOR = 1.3
INFERENCE_FACTOR = 0.2
FLOAT = 4


def node_memory() -> tuple[int, str]:
    """(bytes this node can still give, where that figure comes from)."""
    available, source = _meminfo("MemAvailable"), "MemAvailable"
    headroom = _cgroup_headroom()
    if headroom is not None and headroom < available:
        available, source = headroom, "the cgroup's memory limit"
    return available, source


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def _cgroup_headroom() -> int | None:
    """The cgroup's limit less its usage (v2 or v1), or None if unlimited or unknown."""
    try:
        with open("/proc/self/cgroup") as f:
            entries = [line.strip().split(":", 2) for line in f if line.strip()]
    except OSError:
        return None
    for hierarchy, controllers, path in entries:
        if hierarchy == "0":  # v2: memory.max, memory.current
            files = ("/sys/fs/cgroup", "memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            files = ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        root, limit_name, usage_name = files
        # Inside a cgroup namespace the own cgroup is the mount's root, outside it is at ``path``.
        for directory in (os.path.join(root, path.lstrip("/")), root):
            limit, usage = _read_number(os.path.join(directory, limit_name)), _read_number(
                os.path.join(directory, usage_name))
            if limit is not None and usage is not None:
                if limit < 1 << 60:
                    return max(0, limit - usage)
                break
    return None


def _read_number(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def gpt_parameters(cfg: TrainConfig, width: int | None = None) -> int:
    """The demo GPT's parameter count, in closed form (model/gpt.py; the head is tied to the embedding).

    >>> gpt_parameters(TrainConfig())
    842496
    """
    w, vocab = cfg.width if width is None else width, 256
    per_block = 2 * 2 * w + (3 * w * w + 3 * w) + (w * w + w) + (4 * w * w + 4 * w) + (4 * w * w + w)
    return vocab * w + cfg.context * w + cfg.layers * per_block + 2 * w


def state_bytes(cfg: TrainConfig, parameter_bytes: int, world: int) -> dict[str, int]:
    """Gradient and optimizer-state bytes per rank for ``parameter_bytes`` of parameters."""
    copies = {"adamw": 2, "onebit-adam": 4, "sgd": 1 if cfg.momentum else 0}[cfg.optimizer]
    shard = world if cfg.zero else 1
    # Gradients: the parameters' .grad are views of the buckets; ZeRO-2 keeps a shard after the reduce-scatter,
    # but the bucket in flight is whole, so count them whole.
    return {"gradients": parameter_bytes, "optimizer state": copies * parameter_bytes // shard}


def saved_activation_bytes(task: Task, batch) -> int:
    """Bytes autograd saves for backward in one forward of ``batch`` (parameters excluded).

    The forward leaves no trace: torch's RNG state (dropout) and the model's buffers (BatchNorm's running
    statistics) are put back, so the run computes exactly what it would have without the probe.
    """
    rng, buffers = torch.get_rng_state(), [b.detach().clone() for b in task.model.buffers()]
    try:
        return _saved_bytes(task, batch)
    finally:
        torch.set_rng_state(rng)
        with torch.no_grad():
            for b, saved in zip(task.model.buffers(), buffers):
                b.copy_(saved)


def _saved_bytes(task: Task, batch) -> int:
    params = {p.data_ptr() for p in task.model.parameters()}
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.data_ptr(), t.numel(), t.dtype)
        if t.data_ptr() not in params and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad():
        loss = call(task.loss_fn, task.model, batch)
    del loss
    return total


PROBE_CONTEXT = 128  # longer sequences are extrapolated: a probe at a long context could itself exhaust memory


def activation_bytes_per_sample(cfg: TrainConfig, task: Task) -> int:
    """Saved activation bytes of one sample: the dataset's first, or the corpus's window of --context tokens.

    A context longer than PROBE_CONTEXT is not run: activations grow as a*T + b*T^2 in the sequence length
    (attention's scores are T x T), so two probes, at PROBE_CONTEXT/2 and PROBE_CONTEXT, give a and b.
    """
    if task.train_data is not None:
        from torch.utils.data import default_collate
        return saved_activation_bytes(task, (task.collate_fn or default_collate)([task.train_data[0]]))

    def probe(length: int) -> int:
        x = torch.zeros(1, length, dtype=torch.long)
        return saved_activation_bytes(task, (x, x.clone()))

    if cfg.context <= PROBE_CONTEXT:
        return probe(cfg.context)
    t1, t2 = PROBE_CONTEXT // 2, PROBE_CONTEXT
    m1, m2 = probe(t1), probe(t2)
    b = max(0.0, (m2 / t2 - m1 / t1) / (t2 - t1))  # from m = a*t + b*t^2
    a = max(0.0, m2 / t2 - b * t2)
    return int(a * cfg.context + b * cfg.context ** 2)


def estimate(cfg: TrainConfig, task: Task, world: int) -> dict[str, int]:
    """Each part of this rank's peak memory beyond what it holds now (the built model), in bytes."""
    parameter_bytes = sum(p.numel() * p.element_size() for p in task.model.parameters())
    parts = state_bytes(cfg, parameter_bytes, world)
    try:
        per_sample = activation_bytes_per_sample(cfg, task)
    except Exception:  # a model that cannot run one sample alone (BatchNorm): count its state only
        per_sample = 0
    parts["activations"] = int(BACKWARD_FACTOR * per_sample * cfg.batch_size)
    if task.train_data is None:
        window = (cfg.context + 1) * 8  # int64 rows, then inputs and targets copied out of them
        parts["batches"] = 2 * 3 * window * world * cfg.batch_size
        parts["validation"] = 3 * window * cfg.eval_windows + int(INFERENCE_FACTOR * per_sample
                                                                   * math.ceil(cfg.eval_windows / world))
    return parts


def peak(parts: dict[str, int]) -> int:
    """The state that lives through the run, plus the larger of a training step and a validation."""
    step = parts["activations"] + parts.get("batches", 0)
    return parts["gradients"] + parts["optimizer state"] + max(step, parts.get("validation", 0))


def check(cfg: TrainConfig, task: Task, comm: MPI.Comm) -> None:
    """Raise UsageError if this rank's estimated peak does not fit its share of the node's memory."""
    if not cfg.memory_check:
        return
    parts = estimate(cfg, task, comm.Get_size())
    budget, where = _budget(comm)
    need = peak(parts)
    if need <= budget:
        return
    biggest = max(parts, key=parts.get)
    fix = _largest_that_fits(cfg, parts, biggest, budget)
    listed = ", ".join(f"{name} {_size(b)}" for name, b in parts.items())
    raise UsageError(f"memory: each rank needs about {_size(need)} more at its peak ({listed}), but {where} — "
                     f"{fix}, or pass --memory-check off")


def check_model_size(cfg: TrainConfig, comm: MPI.Comm) -> None:
    """Before building the demo GPT: its parameters and their state fit (--width 1000000 would not)."""
    if not cfg.memory_check or cfg.model != "gpt":
        return
    world = comm.Get_size()

    def need(width: int) -> int:
        weights = FLOAT * gpt_parameters(cfg, width)
        return weights + sum(state_bytes(cfg, weights, world).values())

    budget, where = _budget(comm)
    if need(cfg.width) <= budget:
        return
    width = _largest(lambda w: need(w * cfg.heads) <= budget, cfg.width // cfg.heads) * cfg.heads
    fix = (f"the largest --width that fits (a multiple of --heads {cfg.heads}) is {width}" if width
           else "no --width fits with these --layers")
    raise UsageError(f"memory: the model at --width {cfg.width} has {gpt_parameters(cfg):,} parameters; they, "
                     f"their gradients and optimizer state need about {_size(need(cfg.width))} per rank, but "
                     f"{where} — {fix}, or pass --memory-check off")


def _budget(comm: MPI.Comm) -> tuple[int, str]:
    """(bytes this rank may still allocate, a sentence saying where that comes from). Collective."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    ranks_here = node.Get_size()
    available, source = node_memory()
    # The ranks of a node read the figure at slightly different moments: take the lowest.
    available = node.allreduce(available, op=MPI.MIN)
    node.Free()
    share, limit = available // ranks_here, _address_space_headroom()
    if limit is not None and limit < share:  # ulimit -v: this process's own limit is the tighter one
        return limit, f"this rank may allocate {_size(limit)} more (its address-space limit, ulimit -v)"
    return share, (f"this node has {_size(available)} ({source}) for {ranks_here} "
                   f"rank{'s' * (ranks_here > 1)}, {_size(share)} each")


def _address_space_headroom() -> int | None:
    """RLIMIT_AS less this process's virtual size, or None without a limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    return max(0, soft - size)


def _largest_that_fits(cfg: TrainConfig, parts: dict, biggest: str, budget: int) -> str:
    """What to change: the largest --batch-size or --eval-windows that fits, for the part that dominates."""
    state = parts["gradients"] + parts["optimizer state"]
    if biggest in ("activations", "batches"):
        per = (parts["activations"] + parts.get("batches", 0)) / cfg.batch_size
        fits = int((budget - state) // per) if per else 0
        return f"the largest --batch-size that fits is {fits}" if fits >= 1 else "no --batch-size fits"
    if biggest == "validation":
        fits = int((budget - state) // (parts["validation"] / cfg.eval_windows))
        return f"the largest --eval-windows that fits is {fits}" if fits >= 1 else "no --eval-windows fits"
    return "give a smaller model, or --zero 1 or 2 to shard its state, or more nodes"


def _largest(fits, upper: int) -> int:
    """The largest n in 0..upper with fits(n) (fits is monotone); 0 if none."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _size(n: float) -> str:
    """
    >>> _size(3_400_000), _size(12.4e9)
    ('3.4 MB', '12.4 GB')
    """
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"
