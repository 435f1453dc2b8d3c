"""The simulated cluster harness (benchmarks/simcluster): ranks in separate namespaces over shaped links.

A smoke run of 2 hosts at 1 Gbit/s: the allreduce must be correct, its bytes
must have crossed the links, and its bus bandwidth must sit below the link
rate (the shaping works) and above half of it (the data path is not broken).
Needs root; skipped elsewhere, except in CI.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK_GBPS = 1e9 / 8 / 1e9  # 1 Gbit/s in GB/s


@pytest.fixture
def root_only():
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the simulated cluster needs root in CI")
        pytest.skip("network namespaces need root")


def test_two_hosts_at_1gbit_move_the_bytes_over_the_shaped_links(root_only, tmp_path):
    out = tmp_path / "allreduce.json"
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "simcluster", "cluster.py"),
                          "--hosts", "2", "--rate", "1gbit", "--min-bytes", str(4 << 20), "--",
                          sys.executable, "-m", "ringtrain", "bench", "allreduce", "--min-bytes", "4M",
                          "--max-bytes", "4M", "--repeat", "1", "--algorithms", "ring", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {r["algorithm"]: r for r in json.loads(out.read_text())["rows"]}
    assert all(r["wrong"] == 0 for r in rows.values())
    for name in ("ring", "MPI_Allreduce"):
        assert 0.5 * LINK_GBPS < rows[name]["busbw"] < 1.05 * LINK_GBPS, rows[name]
    # Exactly what was created is gone again.
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == before


def test_smoke_sweep_fits_a_cost_model_and_reports_every_section(root_only, tmp_path):
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "simcluster", "sweep.py"), "--smoke",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    for section in ("## (a) allreduce", "## (d) node-aware", "### allreduce, 2 hosts x 2 ranks, 1 Gbit/s",
                    "### the two-level model's predictions",
                    "## (b) compressed allreduce", "## (c) training", "## Cost model", "## Planner validation",
                    "## Targets"):
        assert section in report, section
    for png in ("allreduce_busbw.png", "convergence_loss.png", "bucket_step_time.png", "node_aware_busbw.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    model = json.loads((tmp_path / "costmodel.json").read_text())
    # 1 Gbit/s links: what the ring reached must be a plausible share of the rate.
    assert 0.5 < model["efficiency"]["1000000000.0"] < 1.05 and 0 < model["alpha"] < 0.01
    conv = json.loads((tmp_path / "convergence_n2_1gbit.json").read_text())
    rows = {(r["system"], r["compression"], r["bucket_cap_mb"]): r for r in conv["rows"]}
    # The same job averaged by ringtrain and by DDP over gloo ends at the same loss.
    ours, ddp = rows[("ringtrain", "none", 25.0)], rows[("ddp", "none", 25.0)]
    assert abs(ours["val_loss"] - ddp["val_loss"]) <= 1e-4 * ddp["val_loss"]
    assert any(r["compression"].startswith("auto=") for r in conv["rows"])
    # The benchmark recorded where it ran: MPI saw each namespace as a host of one rank.
    meta = conv["meta"]
    assert (meta["format"], meta["link"], meta["hosts"], meta["ranks_per_host"], meta["world_size"]) == \
        (2, "1gbit", 2, 1, 2), meta
    # Two hosts of two ranks: MPI saw the shape, and the node-aware ring was checked against a closed form.
    two = json.loads((tmp_path / "allreduce_n2x2_1gbit.json").read_text())
    assert (two["meta"]["hosts"], two["meta"]["ranks_per_host"], two["meta"]["world_size"]) == (2, 2, 4)
    hier = [r for r in two["rows"] if r["algorithm"] == "hierarchical"]
    assert hier and all(r["wrong"] == 0 for r in hier)
    # The interface counters show each schedule's bytes per host: one buffer node-aware, 1.5 for the flat ring.
    flat = [r for r in two["rows"] if r["algorithm"] == "ring"]
    assert all(0.95 <= r["link_bytes_vs_bound"] <= 1.05 for r in hier), [r["link_bytes_vs_bound"] for r in hier]
    assert all(1.45 <= r["link_bytes_vs_bound"] <= 1.6 for r in flat), [r["link_bytes_vs_bound"] for r in flat]
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == before
