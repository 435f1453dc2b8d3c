"""``--compression auto`` and ``--bucket-cap-mb auto``: chosen at start-up from a short probe and the model.

The probe measures, on the job's own ranks and links:

- the compute of one step: forward and backward of the first batch (twice;
  the second counts), with the RNG state put back and the gradients dropped;
- the uncompressed allreduce at the full gradient size, at a sixteenth of it
  and of one element, which give its fixed cost per bucket and seconds per byte;
- each candidate compressor's averaging of all the gradients and of the
  last sixteenth of the parameters (the first bucket backward fills), which
  give its fixed cost per call and seconds per byte (when compression is
  auto, or to size the buckets of a fixed compressor). The candidates are
  CHOICES whose validation loss the training sweep measured within 2% of
  uncompressed training (the cost model's loss penalties); one of them,
  onebit-adam, is 1-bit Adam in place of AdamW, timed by its momentum's
  compressed allreduce (its warm-up steps are not compressed).

Every choice (compressor x bucket cap) is then scored by the cost model's
step pipeline (``plan.costmodel.step_time``) with the real bucket layout and
the overlap fitted to the training sweep (the packaged cost model, or the one
RINGTRAIN_COST_MODEL names: fit your own with ``ringtrain plan --fit``), and
compression is taken only if it promises a step at least PAYS shorter than
the best uncompressed choice: where the link is not the limit, it does not
pay. Times are the slowest rank's, so every rank computes the same scores;
rank 0's decision is broadcast all the same.
"""
import dataclasses
import time

import numpy as np
import torch

from .. import environment
from ..collectives import allreduce
from ..timing import median_call, slowest
from ..compression import spec_of
from ..constants import BUCKET_CAP_MB
from ..fault.errors import UsageError, checked
from ..plan.calibrate import averaging
from ..plan.costmodel import ONEBIT_ADAM, step_time
from ..reducer.buckets import bucket_bytes, group_params
from .task import call
from .tuned import Tuned

# What auto may choose: each only if the training sweep (the cost model's loss
# penalties) kept the validation loss within MAX_LOSS_PENALTY of uncompressed
# training; unmeasured counts as too lossy. onebit-adam replaces AdamW by
# 1-bit Adam (--optimizer onebit-adam), so it is a choice only for AdamW.
CHOICES = ("fp16", "ef+int8", "powersgd:rank=4", "dgc:ratio=0.01,momentum=0.9,warmup=200,masking=0", ONEBIT_ADAM)
MAX_LOSS_PENALTY = 0.02
CAPS_MB = (1, 2, 5, 10, 25, 50, 100)
PAYS = 0.95


def probe_compute(model, loss_fn, batch, comm) -> float:
    """Seconds of forward + backward, leaving the model, its gradients and the RNG as they were."""
    with torch.random.fork_rng(devices=[]):
        seconds = 0.0
        for _ in range(2):
            t0 = time.perf_counter()
            call(loss_fn, model, batch).backward()
            seconds = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return slowest(comm, seconds)


def tune(cfg, model, loss_fn, batch, comm) -> Tuned:
    """The compression (or 1-bit Adam) and bucket cap for ``cfg``'s auto fields, with the probe. Collective."""
    params = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in params)
    # Accumulation repeats forward and backward; only the last backward overlaps averaging.
    compute = probe_compute(model, loss_fn, batch, comm) * cfg.accumulate
    full = np.zeros(count, np.float32)
    small = full[:max(1, count // 16)]
    tiny = full[:1]
    t_full = median_call(comm, lambda: allreduce(full, op="mean", comm=comm, check=False), 3)
    t_small = median_call(comm, lambda: allreduce(small, op="mean", comm=comm, check=False), 3)
    # One message of one element: the floor of any bucket's cost, Python included.
    t_tiny = median_call(comm, lambda: allreduce(tiny, op="mean", comm=comm, check=False), 3)
    per_byte, latency = _line(4 * small.size, t_small, 4 * count, t_full)
    latency = max(latency, t_tiny)
    comm_models = {"none": lambda nbytes: latency + per_byte * nbytes}
    cost_model = checked(comm, _cost_model)  # a bad file: one agreed line, exit code 2
    specs = (candidates(cfg, cost_model.loss_penalty if cost_model else {}) if cfg.compression == "auto"
             else [] if cfg.compression == "none" else [cfg.compression])
    layout, _ = _layout(params)
    # The first bucket backward fills, about a sixteenth of the gradients, as the reducer groups it.
    first, size = _layout(group_params(params, max(1, 4 * count // 16))[0])
    data = np.random.default_rng([cfg.seed, comm.Get_rank()]).standard_normal(count).astype(np.float32)
    measured = {"none": t_full}
    for spec in specs:
        times = []
        for part, n in ((layout, count), (first, size)):
            times.append(median_call(comm, averaging(spec, part, data[:n], comm), 2))
        measured[spec_of(spec)] = times[0]
        # A line through both sizes: the fixed part holds the compressor's per-call
        # work and messages; each bucket also averages its used-flags (one message).
        if size < count:
            slope, fixed = _line(4 * size, times[1], 4 * count, times[0])
        else:
            slope, fixed = times[0] / (4 * count), 0.0
        comm_models[spec] = lambda nbytes, f=fixed, s=slope: f + t_tiny + s * nbytes
    overlap = cost_model.overlap if cost_model else 1.0
    param_bytes = [p.numel() * p.element_size() for p in params]
    scores = score(compute, comm_models, param_bytes, cfg.compression, cfg.bucket_cap_mb, overlap)
    best = comm.bcast(choose(scores, cfg.compression == "auto"), root=0)
    compression, optimizer = (best[0], None) if best[0] != ONEBIT_ADAM else ("none", ONEBIT_ADAM)
    probe = {"candidates": [spec_of(s) for s in specs], "compute_s": compute, "allreduce_s": measured,
             "latency_s": latency, "per_byte_s": per_byte, "message_s": t_tiny, "overlap": overlap,
             "predicted_step_s": {f"{spec_of(s)} {c:g}MB": v for (s, c), v in scores.items()}}
    tuned = Tuned(compression=compression, bucket_cap_mb=best[1], optimizer=optimizer, probe=probe)
    return dataclasses.replace(tuned, text=describe(tuned))


def _layout(params) -> tuple[list, int]:
    """``(lo, hi, shape)`` of each parameter laid end to end, as in a bucket, and the element count."""
    segments, at = [], 0
    for p in params:
        segments.append((at, at + p.numel(), tuple(p.shape)))
        at += p.numel()
    return segments, at


def _line(x0, y0, x1, y1) -> tuple[float, float]:
    """(slope, intercept) of the line through two timings, neither negative."""
    slope = max(0.0, (y1 - y0) / (x1 - x0)) if x1 > x0 else 0.0
    return slope, max(0.0, y0 - slope * x0)


def candidates(cfg, loss_penalty: dict) -> list[str]:
    """The CHOICES this run can use whose measured loss penalty is within MAX_LOSS_PENALTY."""
    from ..plan.fit import accuracy_key
    out = []
    for spec in CHOICES:
        penalty = loss_penalty.get(accuracy_key(spec))
        if penalty is None or penalty > MAX_LOSS_PENALTY:
            continue
        if spec == ONEBIT_ADAM:
            if cfg.optimizer == "adamw" and not cfg.elastic:  # refused under --elastic (config.py)
                out.append(spec)
            continue
        try:  # the config's own rules: DGC's momentum, for one, must match the optimizer's
            dataclasses.replace(cfg, compression=spec)
        except UsageError:
            continue
        out.append(spec)
    return out


def _cost_model():
    """RINGTRAIN_COST_MODEL's cost model, or the packaged one; None if the packaged one is missing."""
    from ..plan.costmodel import CostModel
    from ..plan.planner import DEFAULT_MODEL
    chosen = environment.value("RINGTRAIN_COST_MODEL")  # a non-empty path, or None; checked at start-up
    try:
        return CostModel.load(chosen or DEFAULT_MODEL)
    except (OSError, ValueError, TypeError) as e:
        if chosen:
            raise UsageError(f"environment variable RINGTRAIN_COST_MODEL={chosen!r}: not a cost model ({e}) — the "
                             "path of a JSON file that python -m ringtrain plan --fit wrote, or unset it for the "
                             "packaged one") from None
        return None


def score(compute: float, comm_models: dict, param_bytes: list[int], compression: str, bucket_cap_mb,
          overlap: float = 1.0) -> dict:
    """Predicted step seconds per (compressor, bucket cap), with the reducer's real bucket layout."""
    caps = CAPS_MB if bucket_cap_mb == "auto" else (float(bucket_cap_mb),)
    layouts = {cap: bucket_bytes(param_bytes, int(cap * 1e6)) for cap in caps}
    return {(spec, cap): step_time(compute, buckets, comm_time, overlap)
            for spec, comm_time in comm_models.items() if compression in ("auto", spec)
            for cap, buckets in layouts.items()}


def choose(scores: dict, compression_auto: bool) -> tuple:
    """The best (compressor, cap); a compressor only if it beats uncompressed by the margin PAYS."""
    # Exact ties happen when compute hides all communication: then the
    # default-sized bucket, as in DDP, rather than an extreme.
    def rank(choice):
        return scores[choice], abs(np.log(choice[1] / BUCKET_CAP_MB))
    best = min(scores, key=rank)
    if compression_auto and best[0] != "none":
        plain = min(((s, c) for s, c in scores if s == "none"), key=rank)
        if scores[best] > PAYS * scores[plain]:
            best = plain
    return best


def describe(tuned: Tuned) -> str:
    """The line that says what the probe chose, and the timings it chose by."""
    probe = tuned.probe
    candidate = tuned.optimizer or tuned.compression_name  # as the probe names it: a spec, or onebit-adam
    key = f"{candidate} {tuned.bucket_cap_mb:g}MB"
    timed = ", ".join(f"{spec} {1e3 * t:.1f} ms" for spec, t in probe["allreduce_s"].items())
    what = ("optimizer onebit-adam (1-bit Adam: its momentum compressed after the warm-up)" if tuned.optimizer
            else f"compression {candidate}")
    return (f"autotune: {what}, bucket cap {tuned.bucket_cap_mb:g} MB "
            f"(compute {1e3 * probe['compute_s']:.1f} ms per step; averaging all gradients: {timed}; predicted step "
            f"{1e3 * probe['predicted_step_s'][key]:.1f} ms)")
