"""The two-level cost model: closed forms, the intra-node fit, the stored 2 x 2 runs, ef+ specs, the planner's flags."""
import glob
import json
import os

import pytest

from ringtrain.plan.costmodel import Compression, CostModel
from ringtrain.plan.fit import fit_cost_model, known_spec
from ringtrain.plan.two_level import two_level_cases
from ringtrain.results import FORMAT, link_rate, load_result, write_result
from tests.test_plan import ALPHA, BETA, EFF, RATE, plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IA, IB = 2e-6, 1e-10  # intra-node alpha and beta


def model() -> CostModel:
    m = CostModel(alpha=ALPHA, efficiency={str(RATE): EFF}, intra_alpha=IA, intra_beta=IB)
    m.compressors["fp16"] = Compression(ratio=0.5, gamma=1e-9)
    m.compressors["topk"] = Compression(ratio=0.01, gamma=2e-9, summable=False)
    return m


def test_two_level_allreduce_times_follow_their_volumes():
    m, s, n, k = model(), 8e6, 2, 4
    intra = 2 * 3 * IA + 2 * 3 / 4 * s * IB
    assert m.allreduce_time(s, n, RATE, "hierarchical", k) == pytest.approx(intra + 2 * ALPHA + s * BETA)
    assert m.allreduce_time(s, n, RATE, "ring", k) == pytest.approx(14 * ALPHA + 2 * 7 / 8 * s * BETA)
    assert m.allreduce_time(s, n, RATE, "mpi", k) == pytest.approx(1.5 * s * IB + 2 * ALPHA + s * BETA)
    # One rank per node: the node-aware ring is the ring across nodes; one node: only shared memory.
    assert m.allreduce_time(s, 4, RATE, "hierarchical") == pytest.approx(m.allreduce_time(s, 4, RATE, "ring"))
    assert m.allreduce_time(s, 1, RATE, "hierarchical", 4) == pytest.approx(intra)
    with pytest.raises(ValueError, match="'ps' has no two-level model"):
        m.allreduce_time(s, n, RATE, "ps", k)


def test_compression_across_nodes_only_pays_once_per_node():
    m, s, n, k = model(), 8e6, 2, 4
    intra = 2 * 3 * IA + 2 * 3 / 4 * s * IB
    # Summable: each rank encodes its block of s / k; the cross-node ring carries the node's payload.
    assert m.compressed_time(s, n, RATE, "fp16", k=k, node_aware=True) == pytest.approx(
        1e-9 * s / k + intra + 2 * ALPHA + 0.5 * s * BETA)
    assert m.compressed_time(s, n, RATE, "fp16", k=k) == pytest.approx(
        1e-9 * s + 14 * ALPHA + 2 * 7 / 8 * 0.5 * s * BETA)
    # Allgathered: flat, a node's link brings in the payloads of all (n - 1) k remote ranks; node-aware, of n - 1 nodes.
    assert m.compressed_time(s, n, RATE, "topk", k=k, node_aware=True) == pytest.approx(
        2e-9 * s / k + intra + ALPHA + 0.01 * s * BETA)
    assert m.compressed_time(s, n, RATE, "topk", k=k) == pytest.approx(2e-9 * s + 7 * ALPHA + 4 * 0.01 * s * BETA)


def test_an_ef_spec_borrows_its_codecs_figures_but_travels_allgathered():
    m = model()
    m.compressors["int8"] = Compression(ratio=0.25, gamma=3e-9)
    assert known_spec(m, "ef+int8") == "ef+int8"
    derived = m.compressors["ef+int8"]
    assert (derived.ratio, derived.gamma, derived.summable) == (0.25, 3e-9, False)
    assert known_spec(m, "none") == "none" and known_spec(m, "onebit") is None


def test_the_intra_node_terms_are_fitted_from_a_shared_memory_sweep(tmp_path):
    from tests.test_plan import synthetic_results
    paths = synthetic_results(tmp_path)
    rows = [{"algorithm": "ring", "size": s, "time_us": 1e6 * (2 * IA + s * IB)} for s in (1 << 16, 1 << 20, 1 << 24)]
    shm = tmp_path / "allreduce_n2_shm.json"
    write_result(str(shm), "allreduce", {"format": FORMAT, "world_size": 2, "hosts": 1, "ranks_per_host": 2},
                 rows=rows)
    m = fit_cost_model([*paths, str(shm)])
    assert m.intra_alpha == pytest.approx(IA, rel=1e-6) and m.intra_beta == pytest.approx(IB, rel=1e-6)
    assert m.alpha == pytest.approx(ALPHA, rel=1e-6)  # the link fit does not see it
    # The shared-memory result feeds the intra-node terms only: the link terms come from the 4 linked results.
    assert "allreduce_n2_shm.json" in m.origin["intra_beta"]
    assert m.origin["alpha"] == "fitted to 4 sweep results (listed in source)"


def stored_model() -> CostModel:
    paths = [p for p in glob.glob(os.path.join(ROOT, "benchmarks/results/simcluster-full/*.json"))
             if not p.endswith("costmodel.json")]
    return fit_cost_model(paths + [os.path.join(ROOT, "benchmarks/results/allreduce_n2_shm.json")])


@pytest.mark.parametrize("name", ["allreduce_n2x2_1gbit.json", "convergence_n2x2_1gbit.json"])
def test_the_model_predicts_the_stored_2x2_runs_of_ringtrain_within_25_percent(name):
    """Fitted on single-level and shared-memory sweeps only; MPI_Allreduce, the peer, is reported, not held to it."""
    data = load_result(os.path.join(ROOT, "benchmarks/results/simcluster-full", name))
    cases = [c for c in two_level_cases(stored_model(), data, link_rate(data)) if "MPI" not in c["what"]]
    assert len(cases) >= 6
    misses = [(c["what"], round(c["error"], 3)) for c in cases if abs(c["error"]) > 0.25]
    assert not misses


def test_plan_for_nodes_of_several_ranks_goes_node_aware(tmp_path):
    out = tmp_path / "plan.json"
    done = plan("--params", "100M", "--step-compute-s", "0.2", "--link", "1gbit", "--nodes", "2,4",
                "--ranks-per-node", "8", "--compressors", "powersgd:rank=4", "--max-loss-penalty", "0.1",
                "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "8 ranks per node (intra-node alpha" in done.stdout and "# intra_beta: fitted to" in done.stdout
    rows = json.loads(out.read_text())["plan"]
    assert [r["uncompressed"]["algorithm"] for r in rows] == ["hierarchical", "hierarchical"]
    assert all(r["best"]["node_aware"] and r["best"]["ranks_per_node"] == 8 for r in rows)
    bad = plan("--params", "1M", "--step-compute-s", "1", "--ranks-per-node", "0")
    assert bad.returncode == 2 and "argument --ranks-per-node: '0' is not allowed" in bad.stderr


def test_calibrate_times_the_codecs_here_and_says_so(tmp_path):
    out = tmp_path / "plan.json"
    done = plan("--params", "10M", "--step-compute-s", "0.1", "--nodes", "2", "--calibrate", "--json", str(out))
    assert done.returncode == 0, done.stderr
    origin = json.loads(out.read_text())["origin"]
    assert origin["gamma_none"].startswith("calibrated here") and origin["gamma fp16"].startswith("calibrated here")
    assert origin["alpha"].startswith("fitted to") and "gamma" not in origin
