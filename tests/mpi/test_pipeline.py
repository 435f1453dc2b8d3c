"""Pipeline stages in the trainer (--pipeline-stages): P x D ranks train what D data-parallel ranks train at the same
batch, with every schedule; the tied embedding stays one matrix; checkpoints move between pipelined and unpipelined
runs; and what cannot work is refused on every rank.

The reference runs on a communicator of D ranks (one per replica group of the world), so both see the same
replicas' data: ranks s x D + d of the pipeline read replica d's share, as rank d of the reference does.
"""
import os
import re
import shutil

import numpy as np
import pytest
import torch
from mpi4py import MPI

from ringtrain.fault import Preempted, UsageError
from ringtrain.pipeline.split import Elsewhere
from ringtrain.train import TrainConfig, train
from tests.helpers import all_ranks_agree
from tests.mpi.backend_setup import stop
from tests.mpi.test_training import corpus, out_dir  # noqa: F401  (corpus is a fixture)

WORLD = MPI.COMM_WORLD
COMMON = dict(layers=4, heads=2, width=32, context=16, eval_windows=8, sample_tokens=0, log_every=1000, eval_every=2,
              steps=4, batch_size=4, warmup=2, grad_clip=0.5)


@pytest.fixture(scope="module", autouse=True)
def _stop_torch_distributed():
    yield
    stop()


def pipeline_ranks() -> int:
    """P for this world: 2 where it divides the world (D = N/2 replicas), else the whole world (D = 1)."""
    n = WORLD.Get_size()
    return 2 if n % 2 == 0 else n


def relative_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def replicas_comm():
    """The reference's communicator: D ranks, one per pipeline position's replica group."""
    d = WORLD.Get_size() // pipeline_ranks()
    return WORLD.Split(WORLD.Get_rank() // d, WORLD.Get_rank() % d)


def pipelined(schedule: str, **extra) -> dict:
    """The pipeline's fields: 2P micro-batches of one sequence each (1F1B needs at least P)."""
    p = pipeline_ranks()
    per_rank = 2 if schedule == "interleaved" else 1
    layers = max(COMMON["layers"], p * per_rank)
    return dict(COMMON, layers=layers, batch_size=2 * p, pipeline_stages=p, micro_batches=2 * p, schedule=schedule,
                stages_per_rank=per_rank, **extra)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("schedule, accumulate", [("gpipe", 1), ("1f1b", 1), ("interleaved", 1), ("1f1b", 2)])
def test_pipeline_trains_what_data_parallel_ranks_do_at_the_same_batch(corpus, tmp_path, schedule,  # noqa: F811
                                                                        accumulate):
    cfg = pipelined(schedule, data=corpus, accumulate=accumulate)
    ours = train(TrainConfig(**cfg, out_dir=out_dir(tmp_path / "pp")))
    flat = {k: v for k, v in cfg.items() if k not in ("pipeline_stages", "micro_batches", "schedule",
                                                      "stages_per_rank")}
    part = replicas_comm()
    try:
        theirs = train(TrainConfig(**flat, out_dir=out_dir(tmp_path / "dp")), part)
    finally:
        part.Free()
    gap = relative_gap(ours["losses"], theirs["losses"])
    val_gap = relative_gap([v for _, v in ours["val_losses"]], [v for _, v in theirs["val_losses"]])
    moved = ours["losses"][-1] < ours["losses"][0]
    assert all_ranks_agree(gap <= 1e-6 and val_gap <= 1e-6 and moved), (gap, val_gap, ours["losses"])


@pytest.mark.mpi(min_size=2)
def test_the_tied_embedding_stays_one_matrix(corpus, tmp_path):  # noqa: F811
    """The first stage's token embedding and the last stage's head are bitwise equal after training."""
    result = train(TrainConfig(**pipelined("1f1b", data=corpus), out_dir=out_dir(tmp_path)))
    sync = result["sync"]
    layout = sync.layout
    mine = result["model"].tok.weight.detach().numpy().copy()
    first = WORLD.bcast(mine if WORLD.Get_rank() == layout.world_rank(0, 0) else None, root=layout.world_rank(0, 0))
    last_rank = layout.world_rank(layout.ranks - 1, 0)
    last = WORLD.bcast(mine if WORLD.Get_rank() == last_rank else None, root=last_rank)
    trained = result["losses"][-1] < result["losses"][0]
    assert all_ranks_agree(np.array_equal(first, last) and trained)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("direction", ["pipeline to unpipelined", "unpipelined to pipeline", "pipeline to pipeline"])
def test_a_checkpoint_moves_between_layouts(corpus, mpi_tmp_path, direction):  # noqa: F811
    """Written at one layout and resumed at another with the same replicas: the state loaded is bitwise the
    file's (a resume with nothing left to train), and the run goes on as the uninterrupted one, within 1e-6
    (the pipeline's loss is a mean of micro-batch means); at the same layout, bit for bit."""
    cfg = pipelined("1f1b", data=corpus, steps=6, eval_every=0)
    flat = {k: v for k, v in cfg.items() if k not in ("pipeline_stages", "micro_batches", "schedule",
                                                      "stages_per_rank")}
    writer, reader = {"pipeline to unpipelined": (cfg, flat), "unpipelined to pipeline": (flat, cfg),
                      "pipeline to pipeline": (cfg, cfg)}[direction]
    part = replicas_comm()
    d = WORLD.Get_size() // pipeline_ranks()
    group = WORLD.Get_rank() // d  # each reference communicator keeps its own copy of the checkpoints

    def run(fields, **extra):
        if "pipeline_stages" in fields:
            return train(TrainConfig(**fields, **extra))
        extra = dict(extra, out_dir=extra["out_dir"] + f"-{group}")
        if "checkpoint_dir" in extra:
            extra["checkpoint_dir"] += f"-{group}"
        return train(TrainConfig(**fields, **extra), part)

    try:
        whole = run(writer, out_dir=str(mpi_tmp_path / "whole"))
        ckpt = str(mpi_tmp_path / "ckpt")
        with pytest.raises(Preempted):
            run(writer, stop_after=3, checkpoint_dir=ckpt, out_dir=str(mpi_tmp_path / "a"))
        WORLD.Barrier()
        _share(ckpt, writer, reader, WORLD.Get_size() // d)
        loaded = run(dict(reader, steps=3), checkpoint_dir=ckpt, out_dir=str(mpi_tmp_path / "c"))
        resumed = run(reader, checkpoint_dir=ckpt, out_dir=str(mpi_tmp_path / "b"))
    finally:
        part.Free()
    ours, theirs = resumed["losses"], whole["losses"][3:]
    exact = ours == theirs if writer is reader else relative_gap(ours, theirs) <= 1e-6
    saved = torch.load(os.path.join(ckpt, "step-00000003", "replicated.pt"), weights_only=True)["model"]
    names = getattr(loaded["sync"], "names", None)  # a pipeline rank's own parameters, by their whole names
    held = names.params.items() if names is not None else loaded["model"].named_parameters()
    as_saved = all(torch.equal(p, saved[name]) for name, p in held)
    assert all_ranks_agree(exact and as_saved), (ours, theirs, as_saved)


def _share(ckpt: str, writer: dict, reader: dict, groups: int) -> None:
    """Give each side the checkpoint where it looks: the pipeline in ``ckpt``, each reference group in
    ``ckpt-<group>``."""
    if WORLD.Get_rank() == 0:
        if "pipeline_stages" in writer and "pipeline_stages" not in reader:
            for g in range(groups):
                shutil.copytree(ckpt, f"{ckpt}-{g}")
        elif "pipeline_stages" not in writer and "pipeline_stages" in reader:
            shutil.copytree(f"{ckpt}-0", ckpt)
    WORLD.Barrier()


@pytest.mark.mpi(min_size=2)
def test_a_stage_holds_its_blocks_only(corpus, tmp_path):  # noqa: F811
    result = train(TrainConfig(**pipelined("1f1b", data=corpus, steps=1), out_dir=out_dir(tmp_path)))
    sync = result["sync"]
    held = sum(t.numel() for t in sync.model.parameters())
    block = sum(t.numel() for t in sync.model[0].blocks[0].parameters())
    embedding = result["model"].tok.weight.numel() + result["model"].pos.weight.numel()
    ln_f = sum(t.numel() for t in result["model"].ln_f.parameters())
    mine = sum(len(s.blocks) for s in sync.model)
    alive = sum(1 for b in result["model"].blocks if not isinstance(b, Elsewhere))
    ok = alive == mine == sum(sync.counts[i] for i in sync.layout.mine) < COMMON["layers"] \
        and held <= mine * block + embedding + ln_f
    assert all_ranks_agree(ok), (held, mine, alive)


@pytest.mark.mpi(min_size=2)
def test_what_a_pipeline_cannot_run_is_refused_on_every_rank(corpus, tmp_path):  # noqa: F811
    n = WORLD.Get_size()
    cases = [(dict(COMMON, pipeline_stages=n + 1, micro_batches=4), rf"--pipeline-stages {n + 1} does not divide the "
              rf"{n} ranks"),
             (dict(COMMON, pipeline_stages=pipeline_ranks(), micro_batches=4, stage_layers="1,1"),
              r"--stage-layers 1,1: give \d+ whole numbers >= 1, one per stage, that sum to --layers 4"),
             (dict(COMMON, layers=1, pipeline_stages=n, micro_batches=4), rf"{n} stages need at least {n} blocks, "
              "and the GPT has --layers 1"),
             (dict(COMMON, pipeline_stages=n, micro_batches=4, stage_layers=",".join(["4"] + ["0"] * (n - 1))),
              r"one per stage, that sum to --layers 4")]
    refused = []
    for fields, message in cases:
        try:
            train(TrainConfig(**fields, data=corpus, out_dir=out_dir(tmp_path)))
            refused.append(False)
        except UsageError as e:
            refused.append(bool(re.search(message, str(e))) or str(e))
    assert all_ranks_agree(all(r is True for r in refused)), refused


@pytest.mark.mpi(min_size=2)
def test_a_task_without_stages_is_refused(tmp_path):
    import ringtrain
    data = torch.utils.data.TensorDataset(torch.randn(16, 3), torch.randn(16, 1))
    with pytest.raises(UsageError, match=r"pipeline stages are cut from the built-in GPT .* trains a Linear"):
        ringtrain.fit(torch.nn.Linear(3, 1), lambda m, x, y: torch.nn.functional.mse_loss(m(x), y), data,
                      steps=1, batch_size=2, pipeline_stages=WORLD.Get_size(), out_dir=out_dir(tmp_path))


@pytest.mark.mpi(min_size=2)
def test_wire_bytes_count_the_activations_the_replicas_and_the_tie(corpus, tmp_path):  # noqa: F811
    """Per step, a rank sends each micro-batch's activations to the next stage and their gradients to the
    previous one (batch x context x width floats each way), 2(D-1)/D of its stage's gradients to its replicas,
    and the tied matrix once if it holds an end of the pipeline."""
    cfg = pipelined("1f1b", data=corpus, steps=2, eval_every=0)
    result = train(TrainConfig(**cfg, out_dir=out_dir(tmp_path)))
    sync, layout = result["sync"], result["sync"].layout
    last_step = sync.last_wire_bytes  # what metrics.jsonl's last row says (rank 0 writes it)
    activation = cfg["batch_size"] * cfg["context"] * cfg["width"] * 4
    neighbours = (layout.position < layout.ranks - 1) + (layout.position > 0)
    d = layout.replicas
    grads = sum(p.numel() * 4 for p in sync.model.parameters())
    tied = result["model"].tok.weight.numel() * 4 if layout.position in (0, layout.ranks - 1) else 0
    expected = neighbours * activation + 2 * (d - 1) * grads // d + tied
    assert all_ranks_agree(last_step == expected), (last_step, expected)
