"""Pipeline stages for the training loop: the GPT cut into stages (pipeline/), run by torch.distributed.pipelining's
schedules over the ringtrain backend, each stage averaged across its data-parallel replicas by ringtrain's ring.

World = P pipeline ranks x D replicas (pipeline/layout.py). A step's batch
(``--batch-size`` per replica) is cut into ``--micro-batches`` by the
schedule; the loss is each micro-batch's mean cross-entropy, and the
schedule averages their gradients, so P x D ranks at batch b compute what D
ranks at batch b do unpipelined, and one rank at D x b. After the schedule:
the tied embedding's two copies (first and last stage) sum their gradients,
then every stage's gradients are averaged over its replicas in one ring
allreduce. The loop's clipping, validation and sample go through here too
(``clip_grad_norm``, ``validate``, ``sample``), since no rank holds the model.
"""
import time

import numpy as np
import torch
import torch.nn.functional as F
from mpi4py import MPI

from ..collectives import allreduce, traffic
from ..fault.errors import UsageError, agree
from ..pipeline import chain
from ..pipeline.layout import Communicators, Layout
from ..pipeline.split import block_counts, build_stages
from ..pipeline.whole_state import Names, Unsharded, gather_state, load_state
from .torch_distributed import ensure_started
from .validation import read_agreed

SCHEDULES = ("gpipe", "1f1b", "interleaved")


def replicas_of(cfg, world: int) -> int:
    """D, the data-parallel replicas of ``world`` ranks in pipelines of --pipeline-stages; refused if P does not
    divide the world (on every rank alike)."""
    if world % cfg.pipeline_stages:
        raise UsageError(f"--pipeline-stages {cfg.pipeline_stages} does not divide the {world} ranks: the world "
                         "is pipeline stages x data-parallel replicas", agreed=True)
    return world // cfg.pipeline_stages


def data_shard(cfg, comm: MPI.Comm) -> tuple[int, int]:
    """(this rank's replica, D): every stage of a replica reads that replica's share of the data."""
    replicas = replicas_of(cfg, comm.Get_size())
    return comm.Get_rank() % replicas, replicas


class PipelineSync:
    """The GradientSync of ``--pipeline-stages P``; ``model`` is this rank's stages (what its optimizer steps).

    ``last_wire_bytes``: what this rank sent in the last step, counted where it
    is sent (collectives/traffic.py): activations and their gradients to the
    neighbouring stages, the replicas' allreduce, and the tied embedding's sum.
    """

    def __init__(self, gpt, cfg, comm: MPI.Comm):
        from ..model import GPT
        if not isinstance(gpt, GPT):
            raise UsageError(f"--pipeline-stages {cfg.pipeline_stages}: pipeline stages are cut from the built-in "
                             f"GPT (--model gpt), and this run trains a {type(gpt).__name__}; a task's own stages "
                             "are not supported yet — drop --pipeline-stages", agreed=True)
        replicas = replicas_of(cfg, comm.Get_size())
        ensure_started(comm, f"--pipeline-stages {cfg.pipeline_stages}", "--pipeline-stages 1")
        self.layout = Layout(cfg.pipeline_stages, replicas, cfg.stages_per_rank, comm.Get_rank())
        self.replicas = self.layout.replicas
        self.comm = comm
        self.comms = Communicators(self.layout, comm)
        try:
            self._build(gpt, cfg)
        except BaseException:
            self.close()  # a refused layout leaves no communicator or group behind
            raise

    def _build(self, gpt, cfg) -> None:
        try:
            counts = block_counts(gpt, self.layout.stages, cfg.stage_layers)
        except ValueError as e:
            raise UsageError(f"--pipeline-stages {cfg.pipeline_stages} --stages-per-rank {cfg.stages_per_rank}: {e}",
                             agreed=True) from None
        self.counts = counts
        self.stages = dict(zip(self.layout.mine, build_stages(gpt, counts, self.layout.mine)))
        self.model = torch.nn.ModuleList(self.stages.values())
        self.gpt, self.vocab = gpt, gpt.cfg.vocab_size
        self.tied = gpt.tok.weight if self.comms.tied != MPI.COMM_NULL else None
        self.unsharded = Unsharded(gpt.cfg)
        self.parts = cfg.accumulate * cfg.micro_batches
        self.schedule = self._schedule(cfg)
        self.names = None  # with the optimizer (attach)
        self.last_comm_seconds = 0.0
        self._sent = [0]

    def _schedule(self, cfg):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
        built = [PipelineStage(stage, i, self.layout.stages, torch.device("cpu"), group=self.comms.group)
                 for i, stage in self.stages.items()]
        try:
            # scale_grads=False: torch would divide every .grad by M at each step(), gradients that earlier
            # accumulation steps left there included; the loss carries the 1/(M x accumulate) instead.
            if cfg.schedule == "interleaved":
                return ScheduleInterleaved1F1B(built, n_microbatches=cfg.micro_batches, loss_fn=self._loss,
                                               scale_grads=False)
            kind = ScheduleGPipe if cfg.schedule == "gpipe" else Schedule1F1B
            return kind(built[0], n_microbatches=cfg.micro_batches, loss_fn=self._loss, scale_grads=False)
        except ValueError as e:
            raise UsageError(f"--schedule {cfg.schedule} --micro-batches {cfg.micro_batches} at --pipeline-stages "
                             f"{cfg.pipeline_stages}: torch's schedule refuses it ({e})", agreed=True) from None

    def _loss(self, logits, targets):
        """A micro-batch's mean cross-entropy over the step's M x accumulate micro-batches: their sum is the
        step's mean loss, and its gradient the mean gradient (the loop's ``loss / accumulate``)."""
        return F.cross_entropy(logits.reshape(-1, self.vocab), targets.reshape(-1)) / self.parts

    @property
    def _first(self) -> bool:
        return 0 in self.stages

    @property
    def _last(self) -> bool:
        return self.layout.stages - 1 in self.stages

    def attach(self, optimizer) -> None:
        """Name this rank's parameters in the optimizer, for checkpoints (whole_state.py)."""
        self.names = Names(self.gpt, self.stages.values(), optimizer, self.unsharded)

    # -- a step ----------------------------------------------------------------------------------------------

    def forward_backward(self, batches: list) -> float:
        """The schedule over each micro-batch of the step; this rank's part of the loop's loss sum.

        Only the last stage sees the loss: it reports P times its loss, the
        others 0, so the loop's mean over all P x D ranks is the replicas' mean.
        """
        local = 0.0
        self._sent[0] = 0
        for x, y in batches:
            losses = []
            inputs = (x,) if self._first else ()
            with traffic.counting(self._sent):
                self.schedule.step(*inputs, target=y if self._last else None,
                                   losses=losses if self._last else None)
            if self._last:
                local += float(torch.stack(losses).detach().sum())
        return local * self.layout.ranks if self._last else 0.0

    @property
    def last_wire_bytes(self) -> int:
        return self._sent[0]

    def no_sync(self):
        raise NotImplementedError("the pipeline averages once per step, in synchronize")

    def synchronize(self) -> None:
        """Every gradient averaged over this stage's replicas, then the tied embedding's two summed.

        In that order: the two stages average their copies in buffers of
        different sizes, cut differently, so with 3 or more replicas the two
        averages may round differently; a sum of the two is the same bits on
        both, so the copies stay one weight.
        """
        t0 = time.perf_counter()
        if self.replicas > 1:
            params = [p for p in self.model.parameters() if p.grad is not None]
            flat = torch.cat([p.grad.reshape(-1) for p in params]).numpy()
            with traffic.counting(self._sent):
                allreduce(flat, op="mean", comm=self.comms.replicas)
            offset = 0
            for p in params:
                p.grad.copy_(torch.from_numpy(flat[offset:offset + p.numel()]).view_as(p.grad))
                offset += p.numel()
        if self.tied is not None:
            self.comms.tied.Allreduce(MPI.IN_PLACE, self.tied.grad.numpy(), op=MPI.SUM)
            self._sent[0] += self.tied.grad.numel() * self.tied.grad.element_size()  # 2 ranks: each sends it once
        self.last_comm_seconds = time.perf_counter() - t0

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale every stage's gradients to total norm at most ``max_norm`` (the tied matrix counted once, on the
        first stage); returns the norm before. Collective over the pipeline."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None
                 and not (p is self.tied and not self._first)]
        squares = np.array([sum(float(torch.linalg.vector_norm(g, 2, dtype=torch.float64)) ** 2 for g in grads)])
        self.comms.pipeline.Allreduce(MPI.IN_PLACE, squares, op=MPI.SUM)
        norm = float(np.sqrt(squares[0]))
        scale = max_norm / (norm + 1e-6)
        if scale < 1.0:
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        return norm

    # -- forward only -----------------------------------------------------------------------------------------

    def validate(self, source, comm: MPI.Comm) -> dict | None:
        """The mean held-out loss, each replica evaluating its share through its pipeline. Collective.

        Every rank reads its batches, and the ranks agree that they could,
        before the first activation is sent (as validation.validate does)."""
        checked = getattr(source, "fingerprint", None) is not None
        batches, error = read_agreed(source.held_out(), comm, checked)
        agree(comm, error)
        sums = np.zeros(2)
        for count, (x, y) in batches:
            logits = chain.forward(self.stages, self.layout, self.comms.pipeline, x if self._first else None)
            if logits is not None:
                sums += [float(F.cross_entropy(logits.reshape(-1, self.vocab), y.reshape(-1))) * count, count]
        comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
        return None if sums[1] == 0 else {"loss": float(sums[0] / sums[1])}

    @torch.no_grad()
    def sample(self, tokens: int, seed: int) -> str | None:
        """``tokens`` bytes generated after "def " by the first replica's pipeline, as GPT.generate samples them;
        the text on its first rank, None elsewhere. Collective."""
        if self.layout.replica != 0:
            return None
        generator = torch.Generator().manual_seed(seed)
        idx = torch.tensor([list(b"def ")], dtype=torch.long)
        context = self.gpt.cfg.context
        last = (self.layout.stages - 1) % self.layout.ranks
        for _ in range(tokens):
            logits = chain.forward(self.stages, self.layout, self.comms.pipeline,
                                   idx[:, -context:] if self._first else None)
            nxt = np.zeros(1, dtype=np.int64)
            if logits is not None:
                nxt[0] = int(self.gpt.next_token(logits, generator=generator))
            self.comms.pipeline.Bcast(nxt, root=last)
            idx = torch.cat([idx, torch.from_numpy(nxt).view(1, 1)], dim=1)
        return bytes(idx[0].tolist()).decode("utf-8", errors="replace") if self.layout.position == 0 else None

    # -- checkpoints -----------------------------------------------------------------------------------------

    def whole_state(self, optimizer) -> tuple[dict | None, dict | None]:
        """The unsharded GPT's and optimizer's state_dicts on rank 0 (None elsewhere). Collective."""
        whole = gather_state(self.names, optimizer, self.layout.replica == 0, self.comm)
        return whole if whole is not None else (None, None)

    def load_whole_state(self, model_state: dict, optimizer_state: dict, optimizer) -> None:
        load_state(self.names, optimizer, model_state, optimizer_state)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def close(self) -> None:
        """Free the communicators and the pipelines' torch groups (nothing needs them once the run is over)."""
        self.comms.free()
