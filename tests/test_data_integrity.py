"""The token cache proves itself intact, the data a checkpoint was trained on is the data it resumes on,
and paths that are not regular files are refused by name.

In-process on COMM_SELF where a rank's view is enough; the command line (2 ranks, under a timeout) where the
exit code and the one line on stderr are the point, and for FIFOs, which would hang a broken build.
"""
import hashlib
import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from mpi4py import MPI

from ringtrain import checkpoint
from ringtrain.data import Batches, open_tokens, token_cache
from ringtrain.data.files import list_corpus
from ringtrain.data.fingerprint import differences
from ringtrain.fault import Preempted, PreemptionSignals, UsageError
from ringtrain.train import TrainConfig, train
from ringtrain.train.preflight import check_data
from tests.launch import run_mpi

SELF = MPI.COMM_SELF
ROOT = os.path.dirname(os.path.dirname(__file__))
# A tiny model and few steps: what is tested here is the data, not the training.
TINY = ["--layers", "1", "--heads", "2", "--width", "32", "--context", "16", "--eval-windows", "8",
        "--sample-tokens", "0", "--log-every", "1000", "--warmup", "0"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own token cache directory."""
    path = tmp_path / "cache"
    monkeypatch.setenv("RINGTRAIN_CACHE", str(path))
    return path


def write_corpus(path, size=int(2.5 * (1 << 20)), seed=0):
    """``size`` bytes of word salad: three cache blocks at the default size."""
    words = np.array([b"ring ", b"allreduce ", b"gradient ", b"bucket ", b"rank\n", b"chunk "])
    text = b"".join(np.random.default_rng(seed).choice(words, size=size // 5))[:size]
    path.write_bytes(text)
    return str(path)


def draw(tokens) -> list[torch.Tensor]:
    """Ten training batches and the validation set: what a run would see."""
    b = Batches(tokens.tokens, context=32, batch=4, seed=3, rank=0, world=1)
    return [t for step in range(10) for t in b.train(step)] + list(b.validation(16))


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def sidecar_of(path) -> str:
    return str(path).removesuffix(".u8") + ".json"


def damage(kind: str, path) -> str:
    """Damage the cache at ``path``; returns the words the rebuild's line must hold."""
    size = os.path.getsize(path)
    if kind == "truncated":
        os.truncate(path, 400_000)
        return f"it has 400,000 bytes, its sidecar says {size:,}"
    if kind == "random bytes, same size":
        with open(path, "r+b") as f:
            f.seek(1 << 20)
            f.write(np.random.default_rng(1).integers(0, 256, 500_000, dtype=np.uint8).tobytes())
        assert os.path.getsize(path) == size
        return "block 1 of 3 fails its checksum"
    if kind == "grown":
        with open(path, "ab") as f:
            f.write(b"more")
        return f"it has {size + 4:,} bytes, its sidecar says {size:,}"
    side = sidecar_of(path)
    name = os.path.basename(side)
    if kind == "sidecar missing":
        os.remove(side)
        return f"its sidecar {name} is missing"
    if kind == "sidecar garbled":
        with open(side, "r+b") as f:
            f.truncate(os.path.getsize(side) // 2)
        return f"its sidecar {name} is garbled"
    if kind == "sidecar edited":  # valid JSON that no longer matches its own checksum
        data = json.loads(open(side).read())
        data["source"]["blocks"][0] ^= 1
        open(side, "w").write(json.dumps(data))
        return f"its sidecar {name} does not match its own checksum"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["truncated", "random bytes, same size", "grown", "sidecar missing",
                                  "sidecar garbled", "sidecar edited"])
def test_a_damaged_cache_is_rebuilt_with_one_line_and_then_trains_as_a_fresh_one(tmp_path, capfd, kind):
    text = write_corpus(tmp_path / "corpus.txt")
    fresh = open_tokens(text, SELF)
    expected = draw(fresh)
    assert capfd.readouterr().err == ""  # a first build says nothing
    words = damage(kind, fresh.path)
    again = open_tokens(text, SELF)
    err = capfd.readouterr().err
    assert err.startswith(f"ringtrain: warning: the token cache {fresh.path} is damaged ({words}"), err
    assert err.endswith(f"); rebuilding it from {text}\n") and err.count("\n") == 1, err
    assert same(draw(again), expected)
    open_tokens(text, SELF)  # rebuilt: intact, reused without a word
    assert capfd.readouterr().err == ""


def test_an_intact_cache_is_reused_without_rewriting_it(tmp_path, capfd):
    text = write_corpus(tmp_path / "corpus.txt")
    first = open_tokens(text, SELF)
    stamp = os.stat(first.path).st_mtime_ns
    second = open_tokens(text, SELF)
    assert second.path == first.path and os.stat(second.path).st_mtime_ns == stamp
    assert second.fingerprint == first.fingerprint and capfd.readouterr().err == ""


def test_a_source_rewritten_in_place_keeping_size_and_mtime_is_noticed_and_rebuilt(tmp_path, capfd):
    text = write_corpus(tmp_path / "corpus.txt", size=100_000)  # small: the samples cover all of it
    first = open_tokens(text, SELF)
    st = os.stat(text)
    data = bytearray(open(text, "rb").read())
    data[5000] ^= 0x20
    open(text, "wb").write(bytes(data))
    os.utime(text, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = open_tokens(text, SELF)
    assert "changed without a change of size or modification time" in capfd.readouterr().err
    assert bytes(second.tokens[0:len(second.tokens)]) == bytes(data)
    assert second.fingerprint["digest"] != first.fingerprint["digest"]


def test_the_cache_shrinking_under_a_running_reader_is_one_clear_error(tmp_path):
    text = write_corpus(tmp_path / "corpus.txt")
    tokens = open_tokens(text, SELF)
    b = Batches(tokens.tokens, context=32, batch=4, seed=3, rank=0, world=1)
    b.train(0)
    os.truncate(tokens.path, 1000)  # what a SIGBUS was made of, with np.memmap
    expected = (f"the token cache {tokens.path} shrank while this run was reading it: 1,000 bytes, "
                f"{len(tokens.tokens):,} expected — the next start rebuilds it")
    with pytest.raises(UsageError) as caught:
        [b.train(step) for step in range(1, 10)]
    assert str(caught.value) == expected
    with pytest.raises(UsageError, match="shrank while this run was reading it"):
        b.validation(16)


def test_a_block_damaged_during_the_run_is_caught_on_its_first_use(tmp_path):
    text = write_corpus(tmp_path / "corpus.txt")
    tokens = open_tokens(text, SELF)  # verified here; the damage comes after
    with open(tokens.path, "r+b") as f:
        original = f.read()
        f.seek(0)
        f.write(bytes(255 - c for c in original))  # every block, same size
    b = Batches(tokens.tokens, context=32, batch=4, seed=3, rank=0, world=1)
    with pytest.raises(UsageError, match=rf"the token cache {tokens.path} changed while this run was reading it: "
                                         r"block \d \(bytes [\d,]+\.\.[\d,]+\) fails its checksum — the next start "
                                         "rebuilds it"):
        b.train(0)


def test_windows_read_from_the_cache_equal_the_source_bytes(tmp_path):
    text = write_corpus(tmp_path / "corpus.txt")
    tokens = open_tokens(text, SELF)
    source = np.frombuffer(open(text, "rb").read(), dtype=np.uint8)
    b, ref = (Batches(t, context=32, batch=4, seed=3, rank=0, world=1) for t in (tokens.tokens, source))
    assert all(torch.equal(x, y) for step in range(20) for x, y in zip(b.train(step), ref.train(step)))
    lo = (1 << 20) - 5  # a window across a block boundary
    assert np.array_equal(tokens.tokens[lo:lo + 10], source[lo:lo + 10])


def test_a_signal_while_the_cache_is_built_stops_it_cleanly(tmp_path, cache, monkeypatch, capfd):
    directory = tmp_path / "many"
    directory.mkdir()
    for i in range(4):
        write_corpus(directory / f"{i}.txt", size=100_000, seed=i)
    opened = []

    def open_and_signal(entry):  # as if the job were preempted while rank 0 reads the second file
        opened.append(entry.name)
        if len(opened) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_open(entry)

    real_open = token_cache.open_regular
    monkeypatch.setattr(token_cache, "open_regular", open_and_signal)
    signals = PreemptionSignals()  # as the trainer has it: without StopRequest the build would just go on
    try:
        with pytest.raises(Preempted) as stop:
            open_tokens(str(directory), SELF)
    finally:
        signals.close()
    assert stop.value.code == 75 and signals.received == signal.SIGTERM  # passed on to PreemptionSignals too
    assert opened == ["0.txt", "1.txt"]  # stopped before the third file
    assert capfd.readouterr().err.startswith(f"ringtrain: SIGTERM while rank 0 read {directory} into the token cache")
    assert os.listdir(cache) == []  # the temporary file is gone, and nothing claims to be a cache


def test_dot_slash_and_the_plain_path_share_one_cache(tmp_path, monkeypatch):
    write_corpus(tmp_path / "corpus.txt", size=10_000)
    monkeypatch.chdir(tmp_path)
    assert list_corpus("./corpus.txt") == list_corpus("corpus.txt")
    assert open_tokens("./corpus.txt", SELF).path == open_tokens("corpus.txt", SELF).path


def fp(files, digest, blocks=None):
    tokens = sum(size for _, size, _ in files)
    return {"root": "/x", "files": files, "tokens": tokens, "block": 4, "blocks": blocks or [0] * -(-tokens // 4),
            "digest": digest}


def test_differences_name_each_file_and_what_changed():
    t0 = int(time.mktime((2026, 12, 2, 18, 0, 1, 0, 0, -1)) * 1e9)
    t1 = int(time.mktime((2026, 12, 2, 18, 5, 12, 0, 0, -1)) * 1e9)
    was = fp([["a.txt", 1234, t0], ["b.txt", 10, t0]], "x")
    now = fp([["a.txt", 1300, t1], ["c.txt", 10, t0]], "y")
    assert differences(was, now, "corpus") == [
        "corpus/c.txt added", "corpus/b.txt removed",
        "corpus/a.txt: 1,234 bytes -> 1,300 bytes, modified 2026-12-02 18:00:01 -> 18:05:12"]
    assert differences(fp([["a.txt", 5, t0]], "x"), fp([["a.txt", 5, t1]], "y"), "a.txt") == [
        "modified 2026-12-02 18:00:01 -> 18:05:12"]
    # Same sizes and times, other bytes: the files in the changed blocks are named.
    same_stat = [["a.txt", 4, t0], ["b.txt", 4, t0]]
    assert differences(fp(same_stat, "x", [1, 2]), fp(same_stat, "y", [1, 3]), "d") == [
        "content changed in d/b.txt (same sizes and modification times)"]
    # The digest decides: other names, paths or times over the same bytes are the same data.
    assert differences(was, fp([["renamed.txt", 1244, t1]], "x"), "elsewhere") == []


def test_check_data_refuses_what_is_not_a_regular_file_by_what_it_is(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UsageError, match=r"^--data .*/fifo: it is a FIFO, not a regular file or a directory — "):
        check_data(str(tmp_path / "fifo"))
    check_data(write_corpus(tmp_path / "ok.txt", size=100))  # a regular file passes
    os.symlink(tmp_path / "ok.txt", tmp_path / "link.txt")
    check_data(str(tmp_path / "link.txt"))  # and a link to one


def cli(args, cwd, cache, timeout=300):
    t0 = time.monotonic()
    out = run_mpi(2, ["-m", "ringtrain", "train", *TINY, *args], timeout=timeout, cwd=cwd,
                  env={**os.environ, "RINGTRAIN_CACHE": str(cache), "PYTHONPATH": ROOT})
    return out, time.monotonic() - t0


@pytest.mark.parametrize("where", ["the --data path", "inside the --data directory", "a link inside it"])
def test_a_fifo_is_refused_by_name_within_seconds(tmp_path, cache, where):
    d = tmp_path / "d"
    d.mkdir()
    write_corpus(d / "a.txt", size=100_000)
    if where == "the --data path":
        os.mkfifo(tmp_path / "fifo")
        data, words = "fifo", "--data fifo: it is a FIFO, not a regular file or a directory — "
    elif where == "inside the --data directory":
        os.mkfifo(d / "pipe")
        data, words = "d", "--data d: d/pipe is a FIFO, not a regular file — "
    else:
        os.mkfifo(tmp_path / "elsewhere")
        os.symlink(tmp_path / "elsewhere", d / "pipe")
        data, words = "d", f"--data d: d/pipe (a link to {tmp_path}/elsewhere) is a FIFO, not a regular file — "
    out, seconds = cli(["--steps", "2", "--data", data, "--out-dir", str(tmp_path / "o")], tmp_path, cache,
                       timeout=90)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"ringtrain: {words}") and out.stderr.count("\n") == 1, out.stderr
    assert seconds < 60


def one_line(out) -> str:
    assert out.stderr.count("\n") == 1, out.stderr
    return out.stderr


def test_a_resume_on_appended_data_is_refused_naming_the_file_unless_allowed(tmp_path, cache):
    write_corpus(tmp_path / "data.txt", size=200_000)
    run = ["--steps", "4", "--out-dir", str(tmp_path / "o"), "--checkpoint-dir", str(tmp_path / "ckpt")]
    first, _ = cli([*run, "--stop-after", "2", "--data", "data.txt"], tmp_path, cache)
    assert first.returncode == 75, first.stderr
    before = os.stat(tmp_path / "data.txt").st_mtime_ns
    with open(tmp_path / "data.txt", "ab") as f:
        f.write(b"appended ")
    os.utime(tmp_path / "data.txt", ns=(before + 2 * 10**9, before + 2 * 10**9))  # two seconds later, for sure
    refused, _ = cli([*run, "--data", "data.txt"], tmp_path, cache)
    assert refused.returncode == 2
    line = one_line(refused)
    assert line.startswith(f"ringtrain: --data data.txt: changed since {tmp_path}/ckpt/step-00000002 was written: "
                           "200,000 bytes -> 200,009 bytes, modified "), line
    assert "--data-changed ok" in line and "Traceback" not in refused.stderr
    allowed, _ = cli([*run, "--data", "data.txt", "--data-changed", "ok"], tmp_path, cache)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stderr.startswith("ringtrain: warning: --data data.txt: changed since ")
    assert "resumed from the checkpoint at step 2" in allowed.stdout


def test_the_same_data_by_another_path_resumes(tmp_path, cache):
    write_corpus(tmp_path / "data.txt", size=200_000)
    os.mkdir(tmp_path / "copy")
    run = ["--steps", "6", "--out-dir", str(tmp_path / "o"), "--checkpoint-dir", str(tmp_path / "ckpt"),
           "--stop-after", "1"]
    for step, data in enumerate(["data.txt", "./data.txt", "copy/data.txt"], start=1):
        if data.startswith("copy"):  # the same bytes at another path, written later
            (tmp_path / "copy" / "data.txt").write_bytes((tmp_path / "data.txt").read_bytes())
        out, _ = cli([*run, "--data", data], tmp_path, cache)
        assert out.returncode == 75, out.stderr
        assert step == 1 or f"resumed from the checkpoint at step {step - 1}" in out.stdout, out.stdout


def config(tmp_path, data, **kw):
    return TrainConfig(layers=1, heads=2, width=32, context=16, eval_windows=8, sample_tokens=0, log_every=1000,
                       warmup=0, eval_every=0, steps=4, data=str(data), out_dir=str(tmp_path / "o"),
                       checkpoint_dir=str(tmp_path / "ckpt"), **kw)


def test_a_directory_with_a_file_added_is_refused_naming_it(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write_corpus(d / "a.txt", size=100_000)
    with pytest.raises(Preempted):
        train(config(tmp_path, d, stop_after=2), comm=SELF)
    write_corpus(d / "b.txt", size=100_000, seed=1)
    with pytest.raises(UsageError, match=rf"^--data {d}: changed since .*step-00000002 was written: {d}/b.txt "
                                         "added — "):
        train(config(tmp_path, d), comm=SELF)


def test_a_checkpoint_records_the_fingerprint_and_one_without_it_still_loads(tmp_path, capfd):
    text = write_corpus(tmp_path / "data.txt", size=100_000)
    with pytest.raises(Preempted):
        train(config(tmp_path, text, stop_after=2), comm=SELF)
    path = str(tmp_path / "ckpt" / "step-00000002")
    part = os.path.join(path, "replicated.pt")
    state = torch.load(part, weights_only=True)
    assert state["data"] == open_tokens(text, SELF).fingerprint
    # As written before fingerprints: no "data" entry, the manifest updated to match.
    del state["data"]
    torch.save(state, part)
    manifest_path = os.path.join(path, checkpoint.store.MANIFEST)
    manifest = json.loads(open(manifest_path).read())
    manifest["files"]["replicated.pt"] = {"bytes": os.path.getsize(part),
                                          "sha256": hashlib.sha256(open(part, "rb").read()).hexdigest()}
    open(manifest_path, "w").write(json.dumps(manifest))
    capfd.readouterr()
    result = train(config(tmp_path, text), comm=SELF)
    assert result["start_step"] == 2 and len(result["losses"]) == 2
    assert f"ringtrain: note: {path} records no data fingerprint" in capfd.readouterr().err
