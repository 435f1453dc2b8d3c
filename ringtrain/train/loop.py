"""The training loop, one method per piece of a step.

A step: ``step_batches`` (the micro-batches, and for the byte corpus the
ranks' agreement that they could be read), ``forward_backward`` over
``accumulate`` micro-batches (all but the
last inside ``no_sync``), ``synchronize`` (after it the averaged gradient is
identical on every rank), ``optimizer_step`` (clipping, then the optimizer),
``agree`` (one small allreduce carrying the loss, whether any rank was
signalled and whether a timed checkpoint is due, so every rank makes the same
decision at the same step), ``record`` (metrics.jsonl and the progress line on
rank 0), then a checkpoint or validation if due. Each wait for the peers runs
under the watchdog's deadline.

Gradient averaging is whatever ``sync`` is (train/sync.py): the
GradientReducer, or torch DDP for the benchmark peer, through this same loop.
"""
import contextlib
import math
import os
import time
from dataclasses import dataclass, field

import torch
from mpi4py import MPI

from ..fault import EXIT_PREEMPTED, agree, Diverged, Preempted, UsageError, Watchdog, PreemptionSignals, agree_at_step_end
from ..checkpoint.retention import complete_steps
from ..checkpoint.store import CheckpointError
from ..elastic import residuals, shard_copies, ulfm
from ..elastic.rounds import BelowFloor, lost_how
from ..model import GPT
from ..optim.interface import clip_grad_norm
from . import full_state, memory, state
from .config import TrainConfig
from .data_source import prefetcher
from .metrics import Metrics, progress_line, say
from .places import RunPlaces
from .schedule import learning_rate
from .sync import GradientSync
from .task import Task, call
from .tuned import Tuned
from .validation import describe, validate


@dataclass(kw_only=True)
class TrainingLoop:
    cfg: TrainConfig
    comm: MPI.Comm
    task: Task
    sync: GradientSync
    optimizer: torch.optim.Optimizer
    source: object
    """The batches (train/data_source.py)."""
    metrics: Metrics
    watchdog: Watchdog
    signals: PreemptionSignals
    tracer: object
    lineage: str
    start: int
    """The step the run starts from (0, or a checkpoint's)."""
    tuned: Tuned
    """The compression, bucket cap (and optimizer) the run chose for its auto settings: checkpoints keep them."""
    places: RunPlaces = field(default_factory=RunPlaces)
    """The run's directory locks, kept before each checkpoint (train/places.py)."""
    carried: object = None
    """--elastic, after a rank died: what the survivors carried over (elastic/rounds.py); None otherwise."""

    def __post_init__(self):
        self.rank, self.world = self.comm.Get_rank(), self.comm.Get_size()
        self.model = self.task.model
        self.sharded = full_state.is_fully_sharded(self.model)
        self.every_steps, self.every_seconds = self.cfg.checkpoint_interval()
        self.last_checkpoint = time.monotonic()
        self.result = {"losses": [], "step_seconds": [], "val_losses": [], "val_metrics": [], "model": self.model,
                       "world": self.world, "start_step": self.start}
        self.committed = self.start
        """Steps the model and optimizer stand after: under --elastic, where the survivors go on from."""
        self.compresses = self.cfg.elastic and self.tuned.compression_name != "none"
        self.compression_kept = residuals.snapshot(self.sync, self.compresses)
        """--elastic: this rank's compressor state as of ``committed`` (elastic/residuals.py)."""
        self.copying = self.cfg.elastic and self.cfg.zero in (1, 2) and self.cfg.shard_recovery == "copy"
        self.copies = (self.carried.shards if self.carried and self.carried.shards
                       and self.carried.shards.step == self.start else None)
        """--elastic --zero 1/2: the shard copies this rank holds of ``committed`` (elastic/shard_copies.py)."""
        self.saved = self.carried.saved if self.carried else self.start
        """The step of this run's latest checkpoint (or where it started)."""
        cfg = self.cfg
        self.last = self.carried.last if self.carried else (
            cfg.steps if not cfg.stop_after else min(cfg.steps, self.start + cfg.stop_after))
        """Where this run stops, fixed once: a shrunk round keeps the first round's --stop-after point."""
        if self.carried:  # the earlier rounds' rows, up to where this one starts, so the result covers the run
            earlier, kept = self.carried.result, self.start - self.carried.result["start_step"]
            self.result.update({k: earlier[k][:kept] for k in ("losses", "step_seconds")},
                               **{k: [v for v in earlier[k] if v[0] <= self.start] for k in ("val_losses",
                                                                                             "val_metrics")},
                               start_step=earlier["start_step"], start_val_loss=earlier.get("start_val_loss"),
                               recoveries=earlier.get("recoveries", []))

    def run(self) -> dict:
        """Train from ``start`` to --steps (or --stop-after); returns losses, times and validation results."""
        cfg = self.cfg
        last = self.last
        if self.carried and self.carried.stop:  # fewer survivors than --min-ranks
            self.stop_below_floor()
        if self.carried:  # a checkpoint the failure cut off may have completed on some survivors only: agree
            with self.watchdog.guard("start-up", self.start, cfg.timeout):
                self.saved = self.comm.allreduce(self.saved, op=MPI.MIN)
        due = (self.every_steps and self.start % self.every_steps == 0) or self.start in (cfg.steps, last)
        if self.carried and self.saved < self.start and cfg.checkpoint_dir and due:
            with self.watchdog.guard("the directory locks", self.start, cfg.timeout):  # the failure came between
                self.places.keep(self.comm)  # a step and its checkpoint
            self.checkpoint(self.start)
        if self.carried and self.start == last < cfg.steps:  # the failure cut off a stop's checkpoint (rewritten
            self.stop(self.start, None)  # above): stop now, as that round was stopping
        if self.copying:  # this membership's copies of the step it starts from
            self.copy_shards(self.start, cfg.first_timeout)
        if cfg.elastic and cfg.zero and cfg.checkpoint_dir and not self.carried:
            # Under ZeRO the survivors may have to go back to the newest checkpoint (train/survivors.py): there
            # is one of this run from its start on.
            with self.watchdog.guard("the directory locks", self.start, cfg.timeout):
                saved = self.start_saved()
                if not saved:
                    self.places.keep(self.comm)
            if not saved:
                self.checkpoint(self.start)
        if not self.carried:  # a shrunk round goes straight on: it was measured where the run started
            with self.watchdog.guard("validation", self.start, cfg.first_timeout):
                self.result["start_val_loss"] = self.validate(self.start, record=False)
        self.prefetch = prefetcher(cfg, self.source, self.start, last)
        try:
            for step in range(self.start, last):
                self.train_step(step, last)
        finally:
            self.prefetch.close()
        if self.carried and self.carried.failed_at:  # the failure came after the last step: nothing was redone
            self.record_recovery(self.start)
        return self.finish()

    def train_step(self, step: int, last: int) -> None:
        cfg = self.cfg
        t0 = time.perf_counter_ns()
        deadline = cfg.first_timeout if step == self.start else cfg.timeout
        lr = learning_rate(step, lr=cfg.lr, warmup=cfg.warmup, steps=cfg.steps, min_lr_ratio=cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        local = self.forward_backward(step, self.step_batches(step, deadline), deadline)
        exposed = self.synchronize(step, deadline)
        step_loss, signalled, timed_due = self.agree(step, local, deadline)
        if cfg.elastic and not cfg.zero:  # the model changes only once every survivor agrees the step is whole
            self.commit(step + 1, deadline)  # (elastic/ulfm.py)
        self.optimizer_step(step, deadline)
        if cfg.elastic and cfg.zero:  # each rank's step changed its own shard, which dies with it: the commit
            if self.copying:  # comes after the step and its copies (elastic/shard_copies.py)
                self.copy_shards(step + 1, deadline)
            else:
                self.commit(step + 1, deadline)
        self.committed = done = step + 1
        self.tracer.complete("step", "step", t0, time.perf_counter_ns(), step=done)
        if self.carried and self.carried.failed_at:
            self.record_recovery(done)
        if not math.isfinite(step_loss):  # the same agreed value on every rank, so every rank stops here
            self.metrics.write(event="diverged", step=done, loss=str(step_loss))
            raise Diverged(f"the loss is {step_loss} at step {done} — the run stopped without checkpointing this "
                           "state (any earlier checkpoint is intact); lower --lr, set --grad-clip, or check the data",
                           agreed=True)
        self.record(step, step_loss, lr, (time.perf_counter_ns() - t0) / 1e9, exposed)
        if step == self.start:  # the optimizer state exists from the first step on
            with self.watchdog.guard("the memory report", done, deadline):
                self.record_memory(done)
        stopping = signalled or (done == last and done < cfg.steps)
        if cfg.checkpoint_dir and (stopping or timed_due or (self.every_steps and done % self.every_steps == 0)
                                   or done == cfg.steps):
            with self.watchdog.guard("the directory locks", done, deadline):
                self.places.keep(self.comm)  # never write beside another run
            self.checkpoint(done)
            if self.signals.hurried and not stopping:
                raise KeyboardInterrupt
        if stopping:
            self.stop(done, signalled)
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            with self.watchdog.guard("validation", done), self.tracer.span("eval", "eval", step=done):
                self.validate(done)

    def stop(self, done: int, signalled: str | None) -> None:
        """Say so and raise Preempted on every rank (exit code 75), the checkpoint written."""
        cfg = self.cfg
        reason = f"{signalled} on some rank" if signalled else f"--stop-after {cfg.stop_after}"
        saved = f"checkpoint at step {done} written" if cfg.checkpoint_dir else "no --checkpoint-dir, nothing saved"
        say(self.rank, f"stopping after step {done} ({reason}); {saved}; exit code {EXIT_PREEMPTED}")
        self.metrics.write(event="stopped", step=done, reason=reason)
        raise Preempted(done, reason)

    def record_recovery(self, step: int) -> None:
        """--elastic: the line and metrics row of a recovery, once its first step is done (or, past the last
        step, its checkpoint)."""
        carried, seconds = self.carried, time.monotonic() - self.carried.failed_at
        row = {"recovery": len(self.result["recoveries"]) + 1, "step": step, "dead": carried.dead,
               "dead_as_launched": carried.launched, "evicted_as_launched": carried.evicted,
               "world_size_before": carried.world_before,
               "world_size": self.world, "seconds_lost": round(seconds, 3), "from_step": self.start,
               "steps_redone": carried.step - self.start + (step > self.start)}  # the failed one, and any rewound
        self.result["recoveries"].append(row)
        self.metrics.write(event="recovered", **row)
        self.tracer.instant("recovered", "elastic", **row)
        say(self.rank, f"recovered: rank{'s' if len(carried.dead) > 1 else ''} {', '.join(map(str, carried.dead))} "
                       f"{lost_how(carried)}, {self.world} ranks, step {step} done {seconds:.2f} s after "
                       "the failure was seen")
        carried.failed_at, carried.world_before, carried.evicted = 0.0, 0, []  # a later death: a recovery of its own

    def stop_below_floor(self) -> None:
        """--min-ranks: write the committed step's checkpoint on the survivors, then stop on every rank."""
        if self.cfg.checkpoint_dir:
            with self.watchdog.guard("the directory locks", self.start, self.cfg.timeout):
                self.places.keep(self.comm)
            self.checkpoint(self.start)
        saved = (f"checkpoint at step {self.start} written; resume from it" if self.cfg.checkpoint_dir
                 else "no --checkpoint-dir, so nothing was saved")
        self.metrics.write(event="stopped", step=self.start, reason=self.carried.stop)
        raise BelowFloor(f"{self.carried.stop}; {saved}", agreed=True)

    def forward_backward(self, step: int, batches: list, deadline: float | None = None) -> float:
        """Forward and backward over the step's micro-batches; returns this rank's loss (their mean)."""
        cfg, tracer = self.cfg, self.tracer
        if hasattr(self.sync, "forward_backward"):  # a pipeline's schedule runs forward and backward itself,
            # waiting on its neighbouring stages: under the deadline, as every wait for a peer is
            with self.watchdog.guard("the pipeline schedule", step + 1, deadline or cfg.timeout), \
                    tracer.span("pipeline", "compute", step=step + 1):
                return self.sync.forward_backward(batches)
        local = 0.0
        for micro, batch in enumerate(batches):
            quiet = self.sync.no_sync() if micro < cfg.accumulate - 1 else contextlib.nullcontext()
            with quiet:
                with tracer.span("forward", "compute", step=step + 1):
                    loss = call(self.task.loss_fn, self.sync.model, batch) / cfg.accumulate
                with tracer.span("backward", "compute", step=step + 1):
                    loss.backward()
            local += loss.item()
        return local

    def step_batches(self, step: int, deadline: float) -> list:
        """The step's micro-batches, read before its first collective. Collective for the byte corpus.

        The corpus's cache can be cut or damaged under a running job, and a
        rank finds that out only when it reads the bytes, alone. It says so here
        (one MIN allreduce of "all is well", a few microseconds against a step's
        milliseconds), so every rank stops at this step with the same line and
        exit code 2, instead of the others waiting for it in the gradient
        allreduce. A task's datasets are the task's own: no agreement.
        """
        cfg, error, batches = self.cfg, None, []
        with self.tracer.span("data", "data", step=step + 1):
            try:
                for micro in range(cfg.accumulate):
                    batches.append(self.prefetch.get(step * cfg.accumulate + micro))
            except UsageError as e:
                if self.source.fingerprint is None:
                    raise
                error = f"rank {self.rank}, step {step + 1}: {e}"
        if self.source.fingerprint is not None:
            with self.watchdog.guard("the data check", step + 1, deadline):
                agree(self.comm, error)
        return batches

    def synchronize(self, step: int, deadline: float) -> float:
        """Wait for the averaged gradients; returns the seconds waited (communication backward did not hide)."""
        t0 = time.perf_counter()
        with self.watchdog.guard("the gradient allreduce", step + 1, deadline), \
                self.tracer.span("synchronize", "communication", step=step + 1):
            self.sync.synchronize()
        return time.perf_counter() - t0

    def commit(self, step: int, deadline: float) -> None:
        """--elastic: return once every rank got here, and keep the compressor state of ``step``. Collective."""
        with self.watchdog.guard("the commit", step, deadline):
            ulfm.commit(self.comm)
        self.compression_kept = residuals.snapshot(self.sync, self.compresses)

    def copy_shards(self, step: int, deadline: float) -> None:
        """--elastic --zero 1/2: swap shard copies with the ring's neighbours and commit ``step`` with them, so
        the copies kept are always the committed step's. Collective."""
        with self.tracer.span("copies", "elastic", step=step), self.watchdog.guard("the shard copies", step, deadline):
            copies = shard_copies.take(self.optimizer, self.comm, step)
        self.commit(step, deadline)
        self.copies = copies
        if self.carried:  # the last membership's copies, now superseded
            self.carried.shards = None

    def start_saved(self) -> bool:
        """Whether --checkpoint-dir holds a checkpoint of the step this run starts from. Collective."""
        here = self.start in complete_steps(self.cfg.checkpoint_dir) if self.rank == 0 else None
        return self.comm.bcast(here, root=0)

    def optimizer_step(self, step: int, deadline: float | None = None) -> None:
        # Under ZeRO the step waits for the peers (the clipping norm's allreduce, the parameters' allgather). The
        # guard covers its local update too, so a rank stalled there counts as waiting: not evicted, the job
        # ends with exit code 76 as without --elastic.
        waits = self.watchdog.guard("the optimizer step", step + 1, deadline or self.cfg.timeout) if self.cfg.zero \
            else contextlib.nullcontext()
        with self.tracer.span("optimizer", "compute", step=step + 1), waits:
            if self.cfg.grad_clip and hasattr(self.sync, "clip_grad_norm"):  # the norm over a pipeline's stages
                self.sync.clip_grad_norm(self.cfg.grad_clip)
            elif self.cfg.grad_clip:
                # On the averaged gradient, which is bitwise identical on every
                # rank, so every rank clips by the same factor. A sharded optimizer
                # holds only its shard's gradients and computes the global norm itself.
                clip_grad_norm(self.optimizer, self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def agree(self, step: int, local: float, deadline: float):
        """(mean loss over ranks, the signal any rank received or None, a timed checkpoint is due). Collective."""
        timed_due = (self.rank == 0 and self.every_seconds
                     and time.monotonic() - self.last_checkpoint >= self.every_seconds)
        with self.watchdog.guard("the end-of-step allreduce", step + 1, deadline):
            return agree_at_step_end(self.comm, local, self.signals.received, timed_due)

    def record(self, step: int, loss: float, lr: float, step_s: float, exposed: float) -> None:
        """The step's row in metrics.jsonl, and the progress line on rank 0 every --log-every steps."""
        cfg, done = self.cfg, step + 1
        self.result["losses"].append(loss)
        self.result["step_seconds"].append(step_s)
        samples = getattr(self.sync, "replicas", self.world) * cfg.batch_size * cfg.accumulate  # a pipeline: D
        # Tokens for the byte corpus (each sample is --context of them); samples for a dataset.
        per_step, unit = (samples * cfg.context, "tokens") if self.source.steps_per_epoch is None else (samples,
                                                                                                       "samples")
        epoch = ({"epoch": round(done * cfg.accumulate / self.source.steps_per_epoch, 4)}
                 if self.source.steps_per_epoch else {})
        self.metrics.write(step=done, loss=loss, lr=lr, step_seconds=step_s, **{f"{unit}_per_second": per_step / step_s},
                           comm_seconds=self.sync.last_comm_seconds, exposed_comm_seconds=exposed,
                           wire_bytes=self.sync.last_wire_bytes, **epoch)
        if done % cfg.log_every == 0 or step == self.start or done == cfg.steps:
            comm = self.sync.last_comm_seconds
            say(self.rank, progress_line(done, cfg.steps, loss, lr, per_step / step_s,
                                         None if comm is None else comm / step_s, exposed / step_s, step_s,
                                         wire_bytes=self.sync.last_wire_bytes, unit=unit, epoch=epoch.get("epoch")))

    def record_memory(self, step: int) -> None:
        """Each rank's parameter, gradient and optimizer-state bytes and peak RSS, in metrics.jsonl. Collective."""
        ranks = memory.gathered(self.model, self.sync, self.optimizer, self.comm)
        if ranks is not None:
            self.metrics.write(event="memory", step=step, ranks=ranks)

    def checkpoint(self, step: int) -> None:
        # A second SIGINT while it is written waits for it: it must not cost the checkpoint.
        # Checkpoints wait on rank 0's writes to storage: give them at least a minute.
        with self.watchdog.guard("the checkpoint", step, max(self.cfg.timeout, 60.0)), self.signals.deferred(), \
                self.tracer.span("checkpoint", "checkpoint", step=step):
            t0 = time.perf_counter()
            try:
                path = self._save(step)
            except CheckpointError:
                # The directory may have been removed under the write, after the locks were checked: re-take
                # them (LockLost's line on every rank if another run has the directory now) and write again,
                # once; the write is atomic, so a second try never leaves a half checkpoint. (The error is
                # raised on every rank alike, so every rank retries.)
                self.places.keep(self.comm)
                path = self._save(step)
            seconds = time.perf_counter() - t0
        self.last_checkpoint = time.monotonic()
        self.saved = step
        if self.rank == 0:
            size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
            self.metrics.write(event="checkpoint", step=step, path=path, bytes=size, seconds=seconds)
            say(0, f"checkpoint at step {step}: {size / 1e6:.1f} MB in {1e3 * seconds:.0f} ms -> {path}")

    def _save(self, step: int) -> str:
        return state.save(self.cfg, step, self.model, self.optimizer, self.sync, self.comm, self.lineage,
                          self.tuned, data=self.source.fingerprint)

    def validate(self, step: int, record: bool = True) -> float | None:
        """The validation loss at ``step`` (None without held-out data), with a line on rank 0. Collective.

        ``record``: also keep it in the result and write its metrics row.
        """
        if hasattr(self.sync, "validate"):  # through a pipeline's stages
            values = self.sync.validate(self.source, self.comm)
        else:
            values = validate(self.task, self.source, self.comm, fully_sharded=self.sharded)
        if values is None:
            return None
        self.last_values = values
        if record:
            self.result["val_losses"].append((step, values["loss"]))
            self.result["val_metrics"].append((step, values))
            self.metrics.write(step=step, **_val_columns(values))
        say(self.rank, f"validation loss at step {step}: {describe(values)}")
        return values["loss"]

    def finish(self) -> dict:
        """The final validation, the end row of metrics.jsonl, the summary line and (GPT) a sample."""
        cfg, result = self.cfg, self.result
        with self.watchdog.guard("validation", cfg.steps):
            val = self.validate(cfg.steps, record=False)
        columns = {}
        if val is not None:
            result["val_losses"].append((cfg.steps, val))
            result["val_metrics"].append((cfg.steps, self.last_values))
            columns = _val_columns(self.last_values)
        result.update(val_loss=val, start_loss=result["losses"][0] if result["losses"] else None,
                      end_loss=result["losses"][-1] if result["losses"] else None)
        with self.watchdog.guard("the memory report", cfg.steps):
            self.record_memory(cfg.steps)
        # Past here no rank has a short deadline left. A rank whose watchdog decided to abort is held in its
        # guard and never comes, so the others wait here for its verdict, and no "done" precedes an abort.
        with self.watchdog.guard("the end of the run", cfg.steps, max(cfg.timeout, 60.0)):
            self.comm.Barrier()
        self.metrics.write(step=cfg.steps, event="end", start_loss=result["start_loss"], end_loss=result["end_loss"],
                           start_val_loss=result["start_val_loss"], **columns)
        validation = (f", validation loss {result['start_val_loss']:.4f} -> {val:.4f}" if val is not None else "")
        if result["losses"]:
            say(self.rank, f"done: loss {result['start_loss']:.4f} -> {result['end_loss']:.4f}{validation}"
                           + (f"; metrics in {self.metrics.path}" if self.rank == 0 else ""))
        else:
            say(self.rank, f"nothing to do: the checkpoint is already at step {self.start}, which is --steps; "
                           f"nothing trained{validation}")
        if cfg.sample_tokens and isinstance(self.model, GPT):
            # Through a pipeline's stages, or with ZeRO-3 gathering its shards, the sample is collective: every
            # rank generates along, under the deadline.
            with self.watchdog.guard("the sample", cfg.steps, max(cfg.timeout, 60.0)):
                self.sample()
        return result

    def sample(self) -> None:
        """The end-of-run text on rank 0 (GPT only)."""
        cfg = self.cfg
        if hasattr(self.sync, "sample"):
            text = self.sync.sample(cfg.sample_tokens, cfg.seed)
        elif self.rank == 0 or self.sharded:
            text = _sample(self.model, cfg)
            if self.sharded:
                self.model.reshard()
        else:
            text = None
        if text is not None:
            say(self.rank, "sample:\n" + text)


def _val_columns(values: dict) -> dict:
    """metrics.jsonl's names: val_loss, val_<metric>."""
    return {f"val_{name}": value for name, value in values.items()}


def _sample(model: GPT, cfg: TrainConfig) -> str:
    model.eval()
    prompt = torch.tensor([list(b"def ")], dtype=torch.long)
    out = model.generate(prompt, cfg.sample_tokens, generator=torch.Generator().manual_seed(cfg.seed))
    model.train()
    return bytes(out[0].tolist()).decode("utf-8", errors="replace")
