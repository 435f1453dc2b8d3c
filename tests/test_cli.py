"""The command line under mpiexec: version, info, the allreduce benchmark, and abort on failure."""
import json
import os
import re
import time

import pytest

from ringtrain import __version__
from tests.launch import run_mpi

HERE = os.path.dirname(__file__)


def test_version():
    out = run_mpi(1, ["-m", "ringtrain", "--version"])
    assert out.returncode == 0 and out.stdout.strip() == f"ringtrain {__version__}"


def test_info_lists_every_rank_and_the_mpi_library():
    out = run_mpi(2, ["-m", "ringtrain", "info"])
    assert out.returncode == 0, out.stderr
    for key in ("mpi_library", "world_size  2", "rank 0", "rank 1", "thread_level", "numpy", "torch", "mpi4py",
                "survives_a_dead_rank  no: this MPI (MPICH"):
        assert key in out.stdout, out.stdout


def test_an_exception_on_one_rank_aborts_the_whole_job(tmp_path):
    t0 = time.monotonic()
    out = run_mpi(3, [os.path.join(HERE, "scripts", "raise_on_one_rank.py")], timeout=60)
    elapsed = time.monotonic() - t0
    assert out.returncode != 0
    assert "uncaught exception on rank 1" in out.stderr
    assert "deliberate failure on rank 1" in out.stderr
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end"


def test_bench_allreduce_writes_rows_with_no_wrong_results(tmp_path):
    path = tmp_path / "allreduce.json"
    out = run_mpi(2, ["-m", "ringtrain", "bench", "allreduce", "--max-bytes", "64K", "--step-factor", "16",
                      "--repeat", "1", "--algorithms", "ring,recursive_doubling,ps,mpi,auto,auto+check",
                      "--json", str(path)])
    assert out.returncode == 0, out.stderr
    assert "MPI_Allreduce" in out.stdout and "busbw" in out.stdout
    result = json.loads(path.read_text())
    sizes = sorted({row["size"] for row in result["rows"]})
    assert sizes == [4, 64, 1024, 16384]
    # Every algorithm plus the peer, at every size.
    assert len(result["rows"]) == 7 * len(sizes)
    assert all(row["wrong"] == 0 for row in result["rows"])
    assert result["meta"]["world_size"] == 2 and "MPICH" in result["meta"]["mpi_library"]


def test_bench_rejects_an_unknown_algorithm():
    out = run_mpi(1, ["-m", "ringtrain", "bench", "allreduce", "--algorithms", "tree"])
    assert out.returncode != 0 and "--algorithms has ['tree']" in out.stderr


def test_bench_training_times_every_variant_against_ddp(tmp_path):
    path = tmp_path / "training.json"
    out = run_mpi(2, ["-m", "ringtrain", "bench", "training", "--width", "64", "--layers", "1", "--context", "8",
                      "--steps", "2", "--repeat", "1", "--json", str(path)], timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {row["variant"]: row for row in json.loads(path.read_text())["rows"]}
    assert set(rows) == {"compute", "bucket=1MB", "bucket=5MB", "bucket=25MB", "bucket=100MB", "no-bucket", "ddp",
                         "ddp-ringtrain"}
    assert all(row["step_ms"] > 0 for row in rows.values())
    # Each ratio is the row's step time over its peer's, from the same run.
    for row in rows.values():
        assert row["vs_ddp"] == pytest.approx(row["step_ms"] / rows["ddp"]["step_ms"], rel=1e-6)
        assert row["vs_no_bucket"] == pytest.approx(row["step_ms"] / rows["no-bucket"]["step_ms"], rel=1e-6)


def test_bench_convergence_sets_ddp_on_ringtrain_beside_ddp_on_gloo(tmp_path):
    path = tmp_path / "convergence.json"
    out = run_mpi(2, ["-m", "ringtrain", "bench", "convergence", "--width", "32", "--layers", "1", "--context", "16",
                      "--batch-size", "2", "--steps", "4", "--skip", "1", "--bucket-sizes", "25",
                      "--compressors", "none", "--out-dir", str(tmp_path / "runs"), "--ddp",
                      "plain,powersgd:rank=2,ringtrain,ringtrain-hook:powersgd:rank=2,ringtrain-hook:ef+int8",
                      "--json", str(path)], timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {(r["system"], r["compression"]): r for r in json.loads(path.read_text())["rows"]}
    ddp = [key for key in rows if key[0].startswith("ddp")]
    assert ddp == [("ddp", "none"), ("ddp", "powersgd:rank=2"), ("ddp-ringtrain", "none"),
                   ("ddp-ringtrain", "powersgd:rank=2"), ("ddp-ringtrain", "ef+int8")], ddp
    assert [(rows[k]["backend"], rows[k]["hook"]) for k in ddp] == [
        ("gloo", "none"), ("gloo", "torch powerSGD_hook rank=2"), ("ringtrain", "none"),
        ("ringtrain", "ringtrain comm_hook(powersgd:rank=2)"), ("ringtrain", "ringtrain comm_hook(ef+int8)")]
    # Same seeds, same data, no hook: the backends average to the same losses.
    gloo, ours = rows[("ddp", "none")], rows[("ddp-ringtrain", "none")]
    assert ours["val_loss"] == pytest.approx(gloo["val_loss"], rel=1e-5)
    assert ours["final_loss"] == pytest.approx(gloo["final_loss"], rel=1e-5)
    # Each ringtrain row is set beside its gloo peer of the same run: torch's PowerSGD for ringtrain's.
    powersgd, peer = rows[("ddp-ringtrain", "powersgd:rank=2")], rows[("ddp", "powersgd:rank=2")]
    assert powersgd["peer"] == "ddp gloo, hook torch powerSGD_hook rank=2"
    assert powersgd["steps_per_s_vs_peer"] == pytest.approx(powersgd["steps_per_s"] / peer["steps_per_s"])
    assert rows[("ddp-ringtrain", "ef+int8")]["val_loss_vs_peer"] == pytest.approx(
        rows[("ddp-ringtrain", "ef+int8")]["val_loss"] / gloo["val_loss"] - 1)


def test_bench_convergence_refuses_a_bad_ringtrain_hook_before_training(tmp_path):
    out = run_mpi(1, ["-m", "ringtrain", "bench", "convergence", "--ddp", "ringtrain-hook:int9",
                      "--out-dir", str(tmp_path)])
    assert out.returncode != 0 and "int9" in out.stderr and "step" not in out.stdout, out.stdout + out.stderr


def test_a_bad_argument_on_one_rank_makes_every_rank_raise_under_plain_mpiexec():
    script = os.path.join(HERE, "scripts", "bad_argument_on_one_rank.py")
    for n, kind, operation in [(2, "read-only", "allreduce"), (3, "strided", "reduce_scatter"),
                               (2, "int8", "allgather"), (3, "read-only", "broadcast")]:
        out = run_mpi(n, [script, kind, operation], timeout=60)  # a hang would raise TimeoutExpired
        assert out.returncode == 0, out.stderr
        # mpiexec may merge the ranks' lines: find each rank's report in the whole output.
        said = dict(re.findall(r"rank (\d+): (raised \w+|returned)", out.stdout))
        assert said == {str(r): "raised CollectiveMismatchError" for r in range(1, n)} | {"0": said.get("0")}, said
        assert said["0"] in ("raised ValueError", "raised TypeError"), said
        assert out.stdout.count(f"ringtrain.{operation}: ranks passed different arguments (rank 0: an argument it "
                                "refused (") == n - 1, out.stdout
