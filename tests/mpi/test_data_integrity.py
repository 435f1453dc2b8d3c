"""Every rank ends the same way when the data is bad, damaged or changed: rank 0 decides, all raise alike.

Run at several world sizes. Each test gathers what every rank saw and asserts only after its last collective.
"""
import os
import signal

import numpy as np
import pytest
import torch
from mpi4py import MPI

from ringtrain.data import Batches, open_tokens, token_cache
from ringtrain.fault import Preempted, PreemptionSignals, UsageError
from ringtrain.train import TrainConfig, train
from tests.helpers import all_ranks_agree, identical_across_ranks

WORLD = MPI.COMM_WORLD
TINY = dict(layers=1, heads=2, width=32, context=16, eval_windows=8, sample_tokens=0, log_every=1000,
            eval_every=0, warmup=0)


@pytest.fixture
def shared(mpi_tmp_path, monkeypatch):
    """A directory every rank sees (rank 0's), with the token cache in it."""
    monkeypatch.setenv("RINGTRAIN_CACHE", str(mpi_tmp_path / "cache"))
    return mpi_tmp_path


def write_text(path, size, seed=0):
    if WORLD.Get_rank() == 0:
        words = np.array([b"ring ", b"rank ", b"bucket\n", b"chunk "])
        path.write_bytes(b"".join(np.random.default_rng(seed).choice(words, size=size // 4))[:size])
    WORLD.Barrier()
    return str(path)


def outcome(action) -> str:
    """``action()``'s result as a word every rank can compare: ok, or the error's type and message."""
    try:
        action()
        return "ok"
    except (UsageError, Preempted) as e:
        return f"{type(e).__name__}: {e} agreed={getattr(e, 'agreed', None)} code={getattr(e, 'code', None)}"


@pytest.mark.mpi
def test_a_cache_damaged_on_disk_is_rebuilt_by_rank_0_and_every_rank_reads_the_fresh_bytes(shared):
    text = write_text(shared / "corpus.txt", 3 << 20)
    n, r = WORLD.Get_size(), WORLD.Get_rank()

    def shard(tokens):
        return torch.cat([t for step in range(8) for t in
                          Batches(tokens.tokens, context=16, batch=2, seed=5, rank=r, world=n).train(step)])

    fresh = open_tokens(text, WORLD)
    expected = shard(fresh)
    WORLD.Barrier()  # every rank has read: damage now would be caught mid-read instead (token_reader.py)
    if r == 0:
        with open(fresh.path, "r+b") as f:  # the same size, other bytes
            f.seek(1 << 20)
            f.write(os.urandom(500_000))
    WORLD.Barrier()
    rebuilt = open_tokens(text, WORLD)
    got = shard(rebuilt)
    same_everywhere = identical_across_ranks(rebuilt.tokens[0:len(rebuilt.tokens)])
    assert all_ranks_agree(torch.equal(got, expected))
    assert same_everywhere


@pytest.mark.mpi
def test_a_fifo_inside_the_data_directory_is_refused_on_every_rank_alike(shared):
    directory = shared / "d"
    if WORLD.Get_rank() == 0:
        directory.mkdir()
        os.mkfifo(directory / "pipe")
    write_text(directory / "a.txt", 10_000)
    said = outcome(lambda: open_tokens(str(directory), WORLD))
    everyone = WORLD.allgather(said)
    assert all_ranks_agree(said.startswith(f"UsageError: --data {directory}: {directory}/pipe is a FIFO")), said
    assert all_ranks_agree(len(set(everyone)) == 1 and "agreed=True" in said), everyone


@pytest.mark.mpi
def test_a_signal_to_rank_0_while_it_builds_stops_every_rank(shared, monkeypatch):
    directory = shared / "many"
    if WORLD.Get_rank() == 0:
        directory.mkdir()
    WORLD.Barrier()
    for i in range(3):
        write_text(directory / f"{i}.txt", 50_000, seed=i)
    real_open = token_cache.open_regular

    def open_and_signal(entry):  # only rank 0 reads: it is preempted at its second file
        if entry.name == "1.txt":
            os.kill(os.getpid(), signal.SIGTERM)
        return real_open(entry)

    monkeypatch.setattr(token_cache, "open_regular", open_and_signal)
    signals = PreemptionSignals()
    try:
        said = outcome(lambda: open_tokens(str(directory), WORLD))
    finally:
        signals.close()
    everyone = WORLD.allgather(said)
    assert all_ranks_agree(said == "Preempted: 75 agreed=None code=75"), everyone
    assert all_ranks_agree(os.listdir(shared / "cache") == [])


@pytest.mark.mpi
def test_a_resume_on_changed_data_is_refused_on_every_rank(shared):
    text = write_text(shared / "data.txt", 100_000)
    cfg = dict(TINY, data=text, steps=4, batch_size=2, checkpoint_dir=str(shared / "ckpt"),
               out_dir=str(shared / f"o{WORLD.Get_rank()}"))
    stopped = outcome(lambda: train(TrainConfig(**cfg, stop_after=2)))
    if WORLD.Get_rank() == 0:
        with open(text, "ab") as f:
            f.write(b"more")
    WORLD.Barrier()
    refused = outcome(lambda: train(TrainConfig(**cfg)))
    allowed = outcome(lambda: train(TrainConfig(**cfg, data_changed="ok")))
    everyone = WORLD.allgather(refused)
    assert all_ranks_agree(stopped.startswith("Preempted")), stopped
    assert all_ranks_agree(refused.startswith(f"UsageError: --data {text}: changed since ")
                           and "100,000 bytes -> 100,004 bytes" in refused and "agreed=True" in refused), refused
    assert all_ranks_agree(len(set(everyone)) == 1), everyone
    assert all_ranks_agree(allowed == "ok"), allowed


@pytest.mark.mpi
@pytest.mark.parametrize("when", ["training", "validation"])
def test_a_cache_cut_that_one_rank_reads_stops_every_rank_at_the_same_point(shared, monkeypatch, when):
    """Only the last rank's reads see the cut: without the agreement the others would wait in the next collective."""
    from ringtrain.data import token_reader
    text, last = write_text(shared / "data.txt", 100_000), WORLD.Get_size() - 1
    reads = {"train": 0}
    real = token_reader.TokenReader._pread
    validating_after_training = []

    def cut(self, offset, count):
        if WORLD.Get_rank() == last and (reads["train"] >= 3 if when == "training"
                                          else validating_after_training):
            return real(self, self.tokens, count)  # past the end: what a reader of a truncated file gets
        return real(self, offset, count)

    train_batch = Batches.train

    def counted(self, step):
        reads["train"] += 1
        return train_batch(self, step)

    held_out = Batches.held_out

    def validating(self):
        if reads["train"]:  # the validation before step 1 reads intact bytes
            validating_after_training.append(True)
        return held_out(self)

    monkeypatch.setattr(token_reader.TokenReader, "_pread", cut)
    monkeypatch.setattr(Batches, "train", counted)
    monkeypatch.setattr(Batches, "held_out", validating)
    cfg = dict(TINY, data=text, steps=6, batch_size=2, out_dir=str(shared / f"o{WORLD.Get_rank()}"),
               eval_every=2 if when == "validation" else 0)
    said = outcome(lambda: train(TrainConfig(**cfg)))
    everyone = WORLD.allgather(said)
    assert all_ranks_agree(len(set(everyone)) == 1), everyone
    where = "validation" if when == "validation" else "step "
    assert all_ranks_agree(said.startswith(f"UsageError: rank {last}, {where}") and "shrank" in said
                           and "agreed=True" in said), said
