"""The training loop: data-parallel over MPI ranks, gradients averaged by GradientReducer.

Each step: ``accumulate`` micro-batches of forward and backward (all but the
last inside ``no_sync``), ``synchronize`` (the averaged gradient is identical on
every rank), clipping, optimizer step. Rank 0 prints progress and writes
metrics.jsonl; the loss recorded is the mean over ranks.
"""
import contextlib
import time

import numpy as np
import torch
from mpi4py import MPI

from ..collectives.comm import private
from ..data import Batches, open_tokens
from ..data.batches import Prefetcher
from ..model import GPT
from ..reducer import GradientReducer
from .config import TrainConfig
from .metrics import Metrics, progress_line, say
from .model_factory import build_model, make_optimizer
from .schedule import learning_rate
from .threads import set_torch_threads


def train(cfg: TrainConfig, comm: MPI.Comm | None = None) -> dict:
    """Run ``cfg`` on ``comm`` (COMM_WORLD by default); returns the losses and the trained model.

    Collective: every rank of ``comm`` must call it with the same config.
    """
    comm = private(MPI.COMM_WORLD if comm is None else comm)
    rank, world = comm.Get_rank(), comm.Get_size()
    threads = set_torch_threads(comm)
    tokens = open_tokens(cfg.data, comm)
    model, loss_fn = build_model(cfg)
    nparams = sum(p.numel() for p in model.parameters())
    say(rank, f"ringtrain: {world} ranks x {threads} torch threads | {cfg.model} with {nparams:,} parameters | "
              f"{len(tokens.tokens):,} byte tokens from {tokens.source}")
    reducer = GradientReducer(model, bucket_cap_mb=cfg.bucket_cap_mb, comm=comm)
    optimizer = make_optimizer(cfg, model)
    batches = Batches(tokens.tokens, context=cfg.context, batch=cfg.batch_size, seed=cfg.seed,
                      rank=rank, world=world)
    prefetch = Prefetcher(batches, first_step=0)
    metrics = Metrics(cfg.out_dir, rank)
    tokens_per_step = world * cfg.batch_size * cfg.accumulate * cfg.context
    result = {"losses": [], "val_losses": [], "model": model, "world": world}
    try:
        result["start_val_loss"] = _validate(model, loss_fn, batches, cfg, comm)
        say(rank, f"validation loss before training: {result['start_val_loss']:.4f}")
        for step in range(cfg.steps):
            t0 = time.perf_counter()
            lr = learning_rate(step, lr=cfg.lr, warmup=cfg.warmup, steps=cfg.steps, min_lr_ratio=cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            local = 0.0
            for micro in range(cfg.accumulate):
                x, y = prefetch.get(step * cfg.accumulate + micro)
                quiet = reducer.no_sync() if micro < cfg.accumulate - 1 else contextlib.nullcontext()
                with quiet:
                    loss = loss_fn(model, x, y) / cfg.accumulate
                    loss.backward()
                local += loss.item()
            t_sync = time.perf_counter()
            reducer.synchronize()
            exposed = time.perf_counter() - t_sync
            if cfg.grad_clip:
                # On the averaged gradient, which is bitwise identical on every
                # rank, so every rank clips by the same factor.
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_loss = _mean_over_ranks(local, comm)
            step_s = time.perf_counter() - t0
            result["losses"].append(step_loss)
            comm_share, exposed_share = reducer.last_comm_seconds / step_s, exposed / step_s
            metrics.write(step=step + 1, loss=step_loss, lr=lr, step_seconds=step_s,
                          tokens_per_second=tokens_per_step / step_s,
                          comm_seconds=reducer.last_comm_seconds, exposed_comm_seconds=exposed)
            if (step + 1) % cfg.log_every == 0 or step == 0 or step + 1 == cfg.steps:
                say(rank, progress_line(step + 1, cfg.steps, step_loss, lr, tokens_per_step / step_s,
                                        comm_share, exposed_share, step_s))
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                val = _validate(model, loss_fn, batches, cfg, comm)
                result["val_losses"].append((step + 1, val))
                metrics.write(step=step + 1, val_loss=val)
                say(rank, f"validation loss at step {step + 1}: {val:.4f}")
        val = _validate(model, loss_fn, batches, cfg, comm)
        result["val_losses"].append((cfg.steps, val))
        result.update(start_loss=result["losses"][0], end_loss=result["losses"][-1], val_loss=val)
        metrics.write(step=cfg.steps, val_loss=val, event="end", start_loss=result["start_loss"],
                      end_loss=result["end_loss"], start_val_loss=result["start_val_loss"])
        say(rank, f"done: loss {result['start_loss']:.4f} -> {result['end_loss']:.4f}, validation loss "
                  f"{result['start_val_loss']:.4f} -> {val:.4f}" + (f"; metrics in {metrics.path}" if rank == 0 else ""))
        if rank == 0 and isinstance(model, GPT) and cfg.sample_tokens:
            say(rank, "sample:\n" + _sample(model, cfg))
    finally:
        prefetch.close()
        reducer.close()
        metrics.close()
    return result


def _mean_over_ranks(value: float, comm) -> float:
    buf = np.array([value])
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    return float(buf[0]) / comm.Get_size()


@torch.no_grad()
def _validate(model, loss_fn, batches, cfg, comm) -> float:
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
