"""The training loop: data-parallel over MPI ranks, gradients averaged by GradientReducer.

Each step: ``accumulate`` micro-batches of forward and backward (all but the
last inside ``no_sync``), ``synchronize`` (the averaged gradient is identical on
every rank), clipping, optimizer step, then one small allreduce that carries
the loss, whether any rank was signalled and whether a timed checkpoint is due,
so that every rank makes the same decision at the same step. Each wait for the
peers runs under the watchdog's deadline. Rank 0 prints progress and writes
metrics.jsonl. With ``--trace FILE`` every rank records its timeline
(ringtrain/trace) and rank 0 merges them into FILE at the end.
"""
import contextlib
import math
import os
import socket
import time

import numpy as np
import torch
from mpi4py import MPI

from ..collectives.comm import private
from ..constants import BUCKET_CAP_MB
from ..data import Batches, open_tokens
from ..data.batches import Prefetcher
from ..fault import EXIT_PREEMPTED, Diverged, Preempted, PreemptionSignals, Watchdog, agree_at_step_end, checked
from ..model import GPT
from ..reducer import GradientReducer
from ..trace import NO_TRACE, Tracer
from . import state
from .config import TrainConfig
from .metrics import Metrics, progress_line, say
from .model_factory import build_model, make_optimizer
from .preflight import preflight
from .schedule import learning_rate
from .threads import set_torch_threads


def train(cfg: TrainConfig, comm: MPI.Comm | None = None) -> dict:
    """Run ``cfg`` on ``comm`` (COMM_WORLD by default); returns the losses and the trained model.

    Collective: every rank of ``comm`` must call it with the same config.
    Raises Preempted (a SystemExit with code 75) after checkpointing when
    signalled or when --stop-after is reached.
    """
    comm = private(MPI.COMM_WORLD if comm is None else comm)
    rank, world = comm.Get_rank(), comm.Get_size()
    signals = PreemptionSignals()
    watchdog = Watchdog(comm, cfg.timeout)
    lock = reducer = prefetch = metrics = None
    tracer = NO_TRACE
    try:
        with watchdog.guard("start-up", 0, cfg.first_timeout):
            # Every input is checked before any work; a bad one stops every rank with one line (exit code 2).
            lock = preflight(cfg, comm)
            if lock is not None and lock.taken_over():
                say(rank, f"ringtrain: {cfg.checkpoint_dir}: {lock.taken_over()}")
            threads = set_torch_threads(comm)
            tokens = checked(comm, open_tokens, cfg.data, comm)
            model, loss_fn = checked(comm, build_model, cfg)
            batches = checked(comm, Batches, tokens.tokens, context=cfg.context, batch=cfg.batch_size,
                              seed=cfg.seed, rank=rank, world=world)
            tuned = _tune(cfg, model, loss_fn, batches, comm)
            tracer = Tracer(cfg.trace, comm) if cfg.trace else NO_TRACE
            watchdog.trace = tracer
            reducer = GradientReducer(model, bucket_cap_mb=tuned["bucket_cap_mb"], compression=tuned["compression"],
                                      comm=comm, node_aware={"auto": None, "on": True, "off": False}[cfg.node_aware],
                                      trace=tracer, broadcast_buffers=cfg.broadcast_buffers == "on")
            optimizer = make_optimizer(cfg, model)
            start, lineage = state.restore(cfg, model, optimizer, reducer, comm)
            ranks = comm.gather({"rank": rank, "host": socket.gethostname(), "pid": os.getpid()}, root=0)
        nparams = sum(p.numel() for p in model.parameters())
        say(rank, f"ringtrain: {world} ranks x {threads} torch threads | {cfg.model} with {nparams:,} parameters | "
                  f"{len(tokens.tokens):,} byte tokens from {tokens.source}"
                  + (f" | compression {tuned['compression']}" if tuned["compression"] != "none" else ""))
        metrics = Metrics(cfg.out_dir, rank)
        metrics.write(event="start", step=start, world_size=world, ranks=ranks, parameters=nparams,
                      compression=tuned["compression"], bucket_cap_mb=tuned["bucket_cap_mb"],
                      autotune=tuned.get("probe"))
        if "text" in tuned:
            say(rank, tuned["text"])
        if start:
            say(rank, f"resumed from the checkpoint at step {start}")
        prefetch = Prefetcher(batches, first_step=start * cfg.accumulate)
        result = _loop(cfg, comm, model, loss_fn, reducer, optimizer, batches, prefetch, metrics, watchdog,
                       signals, start, lineage, tracer)
        result["tuned"] = {"compression": tuned["compression"], "bucket_cap_mb": tuned["bucket_cap_mb"]}
        with watchdog.guard("writing the trace", cfg.steps, max(cfg.timeout, 60.0)):
            tracer.close()
        if cfg.trace:
            say(rank, f"trace: {cfg.trace} (open it in ui.perfetto.dev; python -m ringtrain trace summary {cfg.trace})")
        return result
    finally:
        if not tracer.closed:  # the run failed: keep this rank's part of the timeline (FILE.rank<r>)
            tracer.write_part()
        for closer in (prefetch, reducer, metrics, watchdog, signals, lock):
            if closer is not None:
                closer.close()


def _tune(cfg, model, loss_fn, batches, comm) -> dict:
    """The compression and bucket cap to run with: as given, as a resumed run chose them, or probed now."""
    if "auto" not in (cfg.compression, cfg.bucket_cap_mb):
        return {"compression": cfg.compression, "bucket_cap_mb": cfg.bucket_cap_mb}
    saved = state.saved_tuning(cfg, comm)
    if saved is not None:
        return {**saved, "text": f"autotune: compression {saved['compression']}, bucket cap "
                                 f"{saved['bucket_cap_mb']:g} MB, as chosen before the checkpoint"}
    if comm.Get_size() == 1:  # nothing to average: nothing to tune
        cap = BUCKET_CAP_MB if cfg.bucket_cap_mb == "auto" else cfg.bucket_cap_mb
        return {"compression": "none", "bucket_cap_mb": cap, "text": "autotune: one rank, no averaging: compression none"}
    from . import autotune
    x, y = batches.train(0)
    tuned = autotune.tune(cfg, model, loss_fn, x, y, comm)
    return {**tuned, "text": autotune.describe(tuned)}


def _loop(cfg, comm, model, loss_fn, reducer, optimizer, batches, prefetch, metrics, watchdog, signals, start,
          lineage, tracer):
    rank, world = comm.Get_rank(), comm.Get_size()
    tokens_per_step = world * cfg.batch_size * cfg.accumulate * cfg.context
    every_steps, every_seconds = cfg.checkpoint_interval()
    last_checkpoint = time.monotonic()
    result = {"losses": [], "step_seconds": [], "val_losses": [], "model": model, "world": world,
              "start_step": start}
    # Checkpoints wait on rank 0's writes to storage: give them at least a minute.
    slow = max(cfg.timeout, 60.0)
    with watchdog.guard("validation", start, cfg.first_timeout):
        result["start_val_loss"] = validate(model, loss_fn, batches, cfg, comm)
    say(rank, f"validation loss at step {start}: {result['start_val_loss']:.4f}")
    last = cfg.steps if not cfg.stop_after else min(cfg.steps, start + cfg.stop_after)
    for step in range(start, last):
        t0 = time.perf_counter_ns()
        deadline = cfg.first_timeout if step == start else cfg.timeout
        lr = learning_rate(step, lr=cfg.lr, warmup=cfg.warmup, steps=cfg.steps, min_lr_ratio=cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        local = 0.0
        for micro in range(cfg.accumulate):
            with tracer.span("data", "data", step=step + 1):
                x, y = prefetch.get(step * cfg.accumulate + micro)
            quiet = reducer.no_sync() if micro < cfg.accumulate - 1 else contextlib.nullcontext()
            with quiet:
                with tracer.span("forward", "compute", step=step + 1):
                    loss = loss_fn(model, x, y) / cfg.accumulate
                with tracer.span("backward", "compute", step=step + 1):
                    loss.backward()
            local += loss.item()
        t_sync = time.perf_counter()
        with watchdog.guard("the gradient allreduce", step + 1, deadline), \
                tracer.span("synchronize", "communication", step=step + 1):
            reducer.synchronize()
        exposed = time.perf_counter() - t_sync
        with tracer.span("optimizer", "compute", step=step + 1):
            if cfg.grad_clip:
                # On the averaged gradient, which is bitwise identical on every
                # rank, so every rank clips by the same factor.
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        timed_due = rank == 0 and every_seconds and time.monotonic() - last_checkpoint >= every_seconds
        with watchdog.guard("the end-of-step allreduce", step + 1, deadline):
            step_loss, signalled, timed_due = agree_at_step_end(comm, local, signals.received, timed_due)
        tracer.complete("step", "step", t0, time.perf_counter_ns(), step=step + 1)
        done = step + 1
        if not math.isfinite(step_loss):  # the same agreed value on every rank, so every rank stops here
            metrics.write(event="diverged", step=done, loss=str(step_loss))
            raise Diverged(f"the loss is {step_loss} at step {done} — the run stopped without checkpointing this "
                           "state (any earlier checkpoint is intact); lower --lr, set --grad-clip, or check the data",
                           agreed=True)
        step_s = (time.perf_counter_ns() - t0) / 1e9
        result["losses"].append(step_loss)
        result["step_seconds"].append(step_s)
        comm_share, exposed_share = reducer.last_comm_seconds / step_s, exposed / step_s
        metrics.write(step=done, loss=step_loss, lr=lr, step_seconds=step_s, tokens_per_second=tokens_per_step / step_s,
                      comm_seconds=reducer.last_comm_seconds, exposed_comm_seconds=exposed,
                      wire_bytes=reducer.last_wire_bytes)
        if done % cfg.log_every == 0 or step == start or done == cfg.steps:
            say(rank, progress_line(done, cfg.steps, step_loss, lr, tokens_per_step / step_s, comm_share,
                                    exposed_share, step_s))
        stopping = signalled or (done == last and done < cfg.steps)
        if cfg.checkpoint_dir and (stopping or timed_due or (every_steps and done % every_steps == 0)
                                   or done == cfg.steps):
            # A second SIGINT while it is written waits for it: it must not cost the checkpoint.
            with watchdog.guard("the checkpoint", done, slow), signals.deferred(), \
                    tracer.span("checkpoint", "checkpoint", step=done):
                _checkpoint(cfg, done, model, optimizer, reducer, comm, metrics, lineage)
            last_checkpoint = time.monotonic()
            if signals.hurried and not stopping:
                raise KeyboardInterrupt
        if stopping:
            reason = f"{signalled} on some rank" if signalled else f"--stop-after {cfg.stop_after}"
            saved = f"checkpoint at step {done} written" if cfg.checkpoint_dir else "no --checkpoint-dir, nothing saved"
            say(rank, f"stopping after step {done} ({reason}); {saved}; exit code {EXIT_PREEMPTED}")
            metrics.write(event="stopped", step=done, reason=reason)
            raise Preempted(done, reason)
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            with watchdog.guard("validation", done), tracer.span("eval", "eval", step=done):
                val = validate(model, loss_fn, batches, cfg, comm)
            result["val_losses"].append((done, val))
            metrics.write(step=done, val_loss=val)
            say(rank, f"validation loss at step {done}: {val:.4f}")
    with watchdog.guard("validation", cfg.steps):
        val = validate(model, loss_fn, batches, cfg, comm)
    result["val_losses"].append((cfg.steps, val))
    result.update(val_loss=val, start_loss=result["losses"][0] if result["losses"] else None,
                  end_loss=result["losses"][-1] if result["losses"] else None)
    metrics.write(step=cfg.steps, val_loss=val, event="end", start_loss=result["start_loss"],
                  end_loss=result["end_loss"], start_val_loss=result["start_val_loss"])
    if result["losses"]:
        say(rank, f"done: loss {result['start_loss']:.4f} -> {result['end_loss']:.4f}, validation loss "
                  f"{result['start_val_loss']:.4f} -> {val:.4f}" + (f"; metrics in {metrics.path}" if rank == 0 else ""))
    else:
        say(rank, f"nothing to do: the checkpoint is already at step {cfg.steps}; validation loss {val:.4f}")
    if rank == 0 and isinstance(model, GPT) and cfg.sample_tokens:
        say(rank, "sample:\n" + _sample(model, cfg))
    return result


def _checkpoint(cfg, step, model, optimizer, reducer, comm, metrics, lineage) -> None:
    t0 = time.perf_counter()
    path = state.save(cfg, step, model, optimizer, reducer, comm, lineage)
    seconds = time.perf_counter() - t0
    if comm.Get_rank() == 0:
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        metrics.write(event="checkpoint", step=step, path=path, bytes=size, seconds=seconds)
        say(0, f"checkpoint at step {step}: {size / 1e6:.1f} MB in {1e3 * seconds:.0f} ms -> {path}")


@torch.no_grad()
def validate(model, loss_fn, batches, cfg, comm) -> float:
    """Mean loss over ``cfg.eval_windows`` held-out windows, split over the ranks. Collective."""
    model.eval()
    x, y = batches.validation(cfg.eval_windows)
    # Sum of per-window losses and the window count, so ranks with one window
    # more or less weigh in correctly.
    local = float(loss_fn(model, x, y)) * len(x) if len(x) else 0.0
    buf = np.array([local, float(len(x))])
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    model.train()
    return float(buf[0] / buf[1])


def _sample(model: GPT, cfg: TrainConfig) -> str:
    model.eval()
    prompt = torch.tensor([list(b"def ")], dtype=torch.long)
    out = model.generate(prompt, cfg.sample_tokens, generator=torch.Generator().manual_seed(cfg.seed))
    model.train()
    return bytes(out[0].tolist()).decode("utf-8", errors="replace")
