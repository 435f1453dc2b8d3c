"""Training: build everything a run needs, run the loop (loop.py), clean up in ``finally``.

``train(cfg)`` is the command line's entry; ``fit(model, loss_fn, train_data, ...)``
is the Python API for any model and map-style dataset. Both check every input
before any work, build the task and its batches, probe the compression if
asked, restore a checkpoint if there is one, then hand over to TrainingLoop.
With ``--trace FILE`` every rank records its timeline (ringtrain/trace) and
rank 0 merges them into FILE at the end.
"""
import dataclasses
import os
import socket
import uuid

from mpi4py import MPI

from ..collectives.comm import private
from ..constants import BUCKET_CAP_MB
from ..fault import OneLineError, Preempted, PreemptionSignals, UsageError, Watchdog, checked
from ..reducer import GradientReducer
from ..trace import NO_TRACE, Tracer
from ..elastic import inject, residuals, rounds as elastic, ulfm
from . import memory_check, pipelined, state, survivors
from .config import TrainConfig
from .data_source import open_source, with_epochs
from .fully_sharded import FullyShardedSync
from .loop import TrainingLoop
from .metrics import Metrics, say
from .model_factory import build_task, make_optimizer
from .preflight import preflight
from .task import Task
from .threads import set_torch_threads
from .tuned import Tuned


def fit(model, loss_fn, train_data, *, val_data=None, collate_fn=None, metrics=None,
        config: TrainConfig | None = None, comm: MPI.Comm | None = None, **options) -> dict:
    """Train ``model`` on a map-style dataset, data-parallel over ``comm``'s ranks. Collective.

    ``loss_fn(model, *batch)`` returns the batch's mean loss; ``metrics`` maps
    names to functions of the same form, reported at each validation.
    ``config`` (or TrainConfig fields as keywords) sets everything else: steps
    or epochs, batch size per rank, optimizer, checkpoints; ``compression`` is a
    spec or a Compressor object (``ErrorFeedback(TopK(0.01))``). Returns the losses,
    step times, validation results and the model, as ``train`` does; raises
    UsageError for bad input, and Preempted (a SystemExit with code 75) after
    checkpointing when signalled.

    >>> import torch
    >>> data = torch.utils.data.TensorDataset(torch.randn(64, 3), torch.randn(64, 1))
    >>> net = torch.nn.Linear(3, 1)
    >>> mse = lambda m, x, y: torch.nn.functional.mse_loss(m(x), y)
    >>> result = fit(net, mse, data, val_data=data, steps=3, batch_size=8, log_every=10,
    ...              out_dir=getfixture("tmp_path").as_posix())                          # doctest: +ELLIPSIS
    ringtrain: 1 ranks x ... | Linear with 4 parameters | 64 training samples (8 micro-steps per epoch), ...
    >>> len(result["losses"])
    3
    """
    cfg = dataclasses.replace(config, **options) if config is not None else TrainConfig(**options)
    task = Task(model, loss_fn, train_data, val_data=val_data, collate_fn=collate_fn, metrics=metrics or {})
    result = train(cfg, comm, task=task)
    if result.get("recoveries"):
        say(result["rank"], "ringtrain: this job lost a rank; Open MPI's MPI_Finalize may wait for it "
                            "forever — end the script with ringtrain.elastic.finalize.exit()")
    return result


def train(cfg: TrainConfig, comm: MPI.Comm | None = None, *, task: Task | None = None, make_sync=None) -> dict:
    """Run ``cfg`` on ``comm`` (COMM_WORLD by default); returns the losses and the trained model.

    Collective: every rank of ``comm`` must call it with the same config.
    ``task`` replaces what ``cfg.model`` names. ``make_sync(task, cfg, comm,
    tuned, tracer)`` builds what averages the gradients (train/sync.py); the
    GradientReducer by default. Raises Preempted (a SystemExit with code 75)
    after checkpointing when signalled or when --stop-after is reached. With
    ``--elastic`` the survivors of a dead rank go on at the smaller size
    (ringtrain/elastic).
    """
    comm = private(MPI.COMM_WORLD if comm is None else comm)
    signals = PreemptionSignals()  # one for the whole run: a signal taken during a failed round is kept
    try:
        if not cfg.elastic:
            return _round(cfg, comm, task, make_sync, signals, None)
        elastic.refuse_unless_possible(cfg, comm)
        return elastic.run_rounds(comm, lambda survivors, carried: _round(cfg, survivors, task, make_sync, signals,
                                                                          carried), cfg.min_ranks)
    finally:
        signals.close()


def _round(cfg: TrainConfig, comm: MPI.Comm, task: Task | None, make_sync, signals, carried) -> dict:
    """``train`` on ``comm``; under --elastic one membership's share of it, starting from ``carried`` (the
    survivors' state in memory) after the first."""
    rank, world = comm.Get_rank(), comm.Get_size()
    places = sync = metrics = loop = watchdog = None
    tracer = NO_TRACE
    try:
        watchdog = Watchdog(comm, cfg.timeout, evict=cfg.elastic)  # under --elastic a stalled rank is ended
        with watchdog.guard("start-up", 0, cfg.first_timeout):
            # This invocation's id, in every metrics row and lock file (a resume gets a new one; a shrunk round not).
            run = carried.run if carried else comm.bcast(uuid.uuid4().hex[:12], root=0)
            # Every input is checked before any work; a bad one stops every rank with one line (exit code 2).
            places = preflight(cfg, comm, run, held=carried.places if carried else None)
            for sentence in places.taken_over():
                say(rank, f"ringtrain: {sentence}")
            threads = set_torch_threads(comm)
            name = type(task.model).__name__ if task is not None else cfg.model
            if task is None:
                checked(comm, memory_check.check_model_size, cfg, comm)  # before allocating the weights
            task = carried.task if carried else task if task is not None else checked(comm, build_task, cfg)
            shard = pipelined.data_shard(cfg, comm) if cfg.pipeline_stages > 1 else None
            source = checked(comm, open_source, cfg, task, comm, shard)
            checked(comm, memory_check.check, cfg, task, comm)
            cfg = with_epochs(cfg, source)
            tuned = carried.tuned if carried else _tune(cfg, task, source, comm)
            if cfg.trace and cfg.elastic:  # one timeline across memberships, a row per launcher rank
                tracer = Tracer(cfg.trace, comm, pid=MPI.COMM_WORLD.Get_rank(),
                                earlier=carried.trace if carried else None)
            else:
                tracer = Tracer(cfg.trace, comm) if cfg.trace else NO_TRACE
            if cfg.elastic:  # RINGTRAIN_KILL's faults, for the tests
                tracer = inject.wrap(tracer)
            watchdog.trace = tracer
            nparams = sum(p.numel() for p in task.model.parameters())  # before a pipeline keeps only its stages
            sync = (make_sync or reducer_sync)(task, cfg, comm, tuned, tracer)
            # What auto chose decides the optimizer too (1-bit Adam, or DGC's under AdamW); the config
            # itself stays as given, so that a resume matches it. A pipeline's rank steps its stages only.
            trained = sync.model if isinstance(sync, pipelined.PipelineSync) else task.model
            optimizer = make_optimizer(tuned.applied_to(cfg), trained, sync)
            if isinstance(sync, pipelined.PipelineSync):
                sync.attach(optimizer)
            if carried:  # the survivors' committed step, in memory (or under ZeRO, maybe the newest checkpoint)
                start, lineage, back = survivors.resume(cfg, carried, task.model, optimizer, sync, comm)
                kept = residuals.restore(sync, carried.compression if start == carried.step else None, comm)
            else:
                start, lineage = state.restore(cfg, task.model, optimizer, sync, comm)
            refuse_past_steps(cfg, start)
            ranks = comm.gather({"rank": rank, "host": socket.gethostname(), "pid": os.getpid()}, root=0)
        if carried:
            say(rank, elastic.shrunk_line(carried, world, start, kept, back))
        else:
            say(rank, f"ringtrain: {world} ranks x {threads} torch threads | {name} with {nparams:,} parameters | "
                      f"{source.describe()}" + (f" | {cfg.epochs} epochs = {cfg.steps} steps" if cfg.epochs else "")
                      + (f" | compression {tuned.compression_name}" if tuned.compression_name != "none" else "")
                      + (f" | optimizer {tuned.optimizer}" if tuned.optimizer else ""))
        metrics = Metrics(cfg.out_dir, rank, run=run, lock=places.out)
        metrics.write(event="start", step=start, world_size=world, ranks=ranks, parameters=nparams,
                      compression=tuned.compression_name, bucket_cap_mb=tuned.bucket_cap_mb,
                      optimizer=tuned.optimizer or cfg.optimizer,
                      autotune=tuned.probe, steps=cfg.steps, steps_per_epoch=source.steps_per_epoch)
        if carried:
            metrics.write(event="shrunk", step=start, world_size=world, dead=carried.dead,
                          dead_as_launched=carried.launched,
                          world_size_before=carried.world_before, recoveries=carried.recoveries)
            earlier = carried.result.get("recoveries") or []
            if earlier and carried.members and carried.members[0] in carried.launched:
                # The rank that wrote the metrics died, maybe before the last recovery's row was out: again,
                # marked, with its number (readers keep one row per number).
                metrics.write(event="recovered", rewritten=True, **earlier[-1])
        else:
            if tuned.text:
                say(rank, tuned.text)
            if start:
                say(rank, f"resumed from the checkpoint at step {start}")
        loop = TrainingLoop(cfg=cfg, comm=comm, task=task, sync=sync, optimizer=optimizer, source=source,
                            metrics=metrics, watchdog=watchdog, signals=signals, tracer=tracer, lineage=lineage,
                            start=start, tuned=tuned, places=places, carried=carried)
        result = loop.run()
        result["tuned"] = tuned.saved()
        result.update(optimizer=optimizer, sync=sync, rank=rank)
        with watchdog.guard("writing the trace", cfg.steps, max(cfg.timeout, 60.0)):
            tracer.close()
        if cfg.trace:
            say(rank, f"trace: {cfg.trace} (open it in ui.perfetto.dev; python -m ringtrain trace summary {cfg.trace})")
        if cfg.elastic:  # the round's last collectives may have failed on some ranks only: agree it is over
            ulfm.commit(comm)
        return result
    except BaseException as error:
        if cfg.elastic and not ulfm.is_rank_failure(error) and _agreed(error):
            try:  # an exit every rank decided (a signal's, bad input, the floor) only if every rank got there
                ulfm.commit(comm)
            except ulfm.NotCommitted as lost:
                error = lost
        if not (cfg.elastic and ulfm.is_rank_failure(error)):
            raise
        # The next round starts from the last committed step; before the loop, from what this round started from.
        onward = carried
        # The first round under ZeRO holds nothing to go on from until its first shard copies are committed: like
        # a death before the loop, the survivors then start afresh at their size (the checkpoint, or step 0).
        nothing_kept = carried is None and loop is not None and loop.copying and loop.copies is None
        if loop is not None and not nothing_kept:  # a recovery under way (carried.world_before) goes on with it
            now = dict(task=task, optimizer=optimizer, step=loop.committed, run=run, lineage=lineage, tuned=tuned,
                       places=places, result=loop.result, saved=loop.saved, last=loop.last,
                       compression=loop.compression_kept, shards=loop.copies)
            onward = dataclasses.replace(carried, **now) if carried else elastic.Carried(**now)
        elif carried is not None and places is not None:  # locks a new rank 0 took in this round's start-up
            onward = dataclasses.replace(carried, places=places)
        if onward is not None and watchdog is not None and watchdog.evicted:  # the line and row name them
            onward.evicted = [*onward.evicted, *watchdog.evicted]
        if onward is not None and places is not None:
            places = None  # carried on: the survivors keep the directories locked
        if onward is not None and tracer.enabled and not tracer.closed:  # the next membership's tracer goes on
            onward.trace, tracer.closed = (tracer.events, tracer.offset_ns), True
        raise elastic.leave_round(comm, error, onward, also=[tracer.comm] if tracer.enabled else []) from error
    finally:
        if not tracer.closed:  # the run failed: keep this rank's part of the timeline (FILE.rank<r>)
            tracer.write_part()
        for closer in (sync, metrics, watchdog, places):
            if closer is not None:
                _close(closer, quietly=cfg.elastic)


def _agreed(error: BaseException) -> bool:
    """Whether every rank raises ``error`` together (so that, under --elastic, they must all have got there)."""
    return isinstance(error, Preempted) or (isinstance(error, OneLineError) and error.agreed)


def _close(closer, quietly: bool) -> None:
    """``closer.close()``; ``quietly`` (--elastic): an MPI error there (a revoked communicator) must not replace
    the rank failure being handled."""
    try:
        closer.close()
    except MPI.Exception:
        if not quietly:
            raise


def refuse_past_steps(cfg: TrainConfig, start: int) -> None:
    """A checkpoint past --steps is refused (exit code 2), before any validation or step.

    Passing it over with exit code 0 would tell a job script that the model
    stands at --steps: it stands further on, under a learning-rate schedule
    that --steps no longer describes, and the flag is most likely a typo.
    """
    if start > cfg.steps:  # the same checkpoint and flags on every rank: agreed
        raise UsageError(f"--steps {cfg.steps} is below the checkpoint's step {start}, so nothing was trained — "
                         f"give --steps > {start} to continue it, or --resume none to start afresh", agreed=True)


def reducer_sync(task: Task, cfg: TrainConfig, comm: MPI.Comm, tuned: Tuned, tracer):
    """The default gradient averaging: ringtrain's GradientReducer with the run's buckets and compression; under
    --zero 3, FSDP2 over the ringtrain backend (train/fully_sharded.py); with --pipeline-stages, the pipeline
    (train/pipelined.py)."""
    if cfg.zero == 3:
        return FullyShardedSync(task.model, comm, param_dtype=cfg.param_dtype, reduce_dtype=cfg.reduce_dtype)
    if cfg.pipeline_stages > 1:
        return pipelined.PipelineSync(task.model, cfg, comm)
    # DGC under AdamW compresses the optimizer's momentum (optim/dgc_adam.py): the reducer averages the warm-up.
    compression = "none" if tuned.applied_to(cfg).dgc_adam else tuned.compression
    return GradientReducer(task.model, bucket_cap_mb=tuned.bucket_cap_mb, compression=compression, comm=comm,
                           node_aware=cfg.node_aware, trace=tracer, broadcast_buffers=cfg.broadcast_buffers,
                           zero=cfg.zero)


def _tune(cfg, task, source, comm) -> Tuned:
    """The compression and bucket cap to run with: as given, as a resumed run chose them, or probed now."""
    # ZeRO-3 and pipelines have no buckets to tune
    if "auto" not in (cfg.compression, cfg.bucket_cap_mb) or cfg.zero == 3 or cfg.pipeline_stages > 1:
        cap = BUCKET_CAP_MB if cfg.bucket_cap_mb == "auto" else cfg.bucket_cap_mb
        return Tuned(compression=cfg.compression, bucket_cap_mb=cap)
    saved = state.saved_tuning(cfg, comm)
    if saved is not None:
        return dataclasses.replace(saved, text=f"autotune: compression {saved.compression_name}, bucket cap "
                                               f"{saved.bucket_cap_mb:g} MB" + (f", optimizer {saved.optimizer}"
                                                                                if saved.optimizer else "")
                                               + ", as chosen before the checkpoint")
    if comm.Get_size() == 1:  # nothing to average: nothing to tune
        cap = BUCKET_CAP_MB if cfg.bucket_cap_mb == "auto" else cfg.bucket_cap_mb
        return Tuned(compression="none", bucket_cap_mb=cap, text="autotune: one rank, no averaging: compression none")
    from . import autotune
    return autotune.tune(cfg, task.model, task.loss_fn, source.train(0), comm)
