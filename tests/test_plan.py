"""The cost model against closed forms, its fit against known parameters, the planner and the autotuner's choice."""
import json
import os
import subprocess
import sys

import pytest

from ringtrain.plan.costmodel import Compression, CostModel, even_buckets, parse_rate, step_time
from ringtrain.plan.fit import accuracy_key, fit_cost_model
from ringtrain.plan.planner import DEFAULT_MODEL, parse_count
from ringtrain.results import FORMAT, write_result
from ringtrain.train import autotune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALPHA, EFF, RATE = 50e-6, 0.9, 1e9
BETA = 8 / (RATE * EFF)


def test_rates_and_counts_parse_and_bad_ones_are_named():
    assert parse_rate("100mbit") == 1e8 and parse_rate("2.5gbit") == 2.5e9 and parse_rate("400kbit") == 4e5
    assert parse_count("124M") == 124e6 and parse_count("1.3G") == 1.3e9 and parse_count("350000") == 350000
    for bad in ("1gbps", "fast", "-1gbit", "infgbit", "nangbit"):
        with pytest.raises(ValueError, match="looks like 100mbit"):
            parse_rate(bad)
    for bad in ("many", "infM", "nan", "-3M", "0"):
        with pytest.raises(ValueError, match="--params looks like"):
            parse_count(bad)


def test_allreduce_times_follow_the_textbook_volumes():
    m = CostModel(alpha=ALPHA, efficiency={str(RATE): EFF})
    s = 8e6
    assert m.allreduce_time(s, 4, RATE, "ring") == pytest.approx(6 * ALPHA + 1.5 * s * BETA)
    assert m.allreduce_time(s, 4, RATE, "recursive_doubling") == pytest.approx(2 * (ALPHA + s * BETA))
    assert m.allreduce_time(s, 4, RATE, "ps") == pytest.approx(6 * (ALPHA + s * BETA))
    assert m.allreduce_time(s, 1, RATE) == 0.0
    m.compressors["fp16"] = Compression(ratio=0.5, gamma=1e-9)
    m.compressors["topk"] = Compression(ratio=0.01, gamma=2e-9, summable=False)
    assert m.compressed_time(s, 4, RATE, "fp16") == pytest.approx(1e-9 * s + 6 * ALPHA + 1.5 * 0.5 * s * BETA)
    assert m.compressed_time(s, 4, RATE, "topk") == pytest.approx(2e-9 * s + 3 * (ALPHA + 0.01 * s * BETA))
    with pytest.raises(ValueError, match="no figures for compressor 'int8'"):
        m.compressed_time(s, 4, RATE, "int8")


def test_the_step_pipeline_overlaps_buckets_with_backward():
    assert even_buckets(10, 4) == [4, 4, 2] and even_buckets(3, 4) == [3]
    # No communication: the compute alone. One bucket: compute, then all of it.
    assert step_time(0.3, [8], lambda b: 0.0) == pytest.approx(0.3)
    assert step_time(0.3, [8], lambda b: 0.1) == pytest.approx(0.4)
    # Four equal buckets ready at 0.15, 0.2, 0.25, 0.3 (backward is 2/3 of 0.3):
    # each takes 0.01 and waits for nothing, so only the last is exposed.
    assert step_time(0.3, [2, 2, 2, 2], lambda b: 0.01) == pytest.approx(0.31)
    # Each takes 0.1: they queue behind each other from the first.
    assert step_time(0.3, [2, 2, 2, 2], lambda b: 0.1) == pytest.approx(0.15 + 0.4)


def meta(n):
    """The meta block of a result measured on n hosts, one rank each, at 1 Gbit/s."""
    return {"format": FORMAT, "world_size": n, "hosts": n, "ranks_per_host": 1, "link": "1gbit"}


def synthetic_results(tmp_path):
    """bench allreduce / compression JSON generated from known alpha, beta, gamma."""
    paths = []
    for n in (2, 4):
        rows = [{"algorithm": "ring", "size": s, "time_us": 1e6 * (2 * (n - 1) * ALPHA + 2 * (n - 1) / n * s * BETA)}
                for s in (1 << 16, 1 << 20, 1 << 24)]
        path = tmp_path / f"allreduce_n{n}_1gbit.json"
        write_result(str(path), "allreduce", meta(n), rows=rows)
        paths.append(str(path))
    s = 1 << 24
    rows = [{"compressor": "int8", "size": s, "wire_ratio": 0.25,
             "allreduce_s": 3e-9 * s + 6 * ALPHA + 1.5 * 0.25 * s * BETA},
            {"compressor": "topk:ratio=0.01", "size": s, "wire_ratio": 0.02,
             "allreduce_s": 1e-9 * s + 3 * (ALPHA + 0.02 * s * BETA)},
            {"compressor": "onebit", "size": s, "wire_ratio": 0.032,
             "allreduce_s": 2e-9 * s + 3 * (ALPHA + 0.032 * s * BETA)}]
    path = tmp_path / "compression_n4_1gbit.json"
    write_result(str(path), "compression", meta(4), rows=rows)
    paths.append(str(path))
    rows = [{"system": "ringtrain", "compression": "ef+int8", "val_loss_vs_none": 0.004},
            {"system": "ringtrain", "compression": "ef+topk:ratio=0.01", "val_loss_vs_none": 0.2},
            {"system": "ringtrain", "compression": "dgc:ratio=0.01,warmup=9", "val_loss_vs_none": 0.15},
            {"system": "onebit-adam", "compression": "none", "val_loss_vs_none": 0.006}]
    path = tmp_path / "convergence_n4_1gbit.json"
    write_result(str(path), "convergence", meta(4), rows=rows)
    paths.append(str(path))
    return paths


def test_the_fit_recovers_alpha_beta_gamma_and_the_loss_penalty(tmp_path):
    m = fit_cost_model(synthetic_results(tmp_path))
    assert m.alpha == pytest.approx(ALPHA, rel=1e-6)
    assert m.efficiency == {str(RATE): pytest.approx(EFF, rel=1e-6)}
    assert m.compressors["int8"].gamma == pytest.approx(3e-9, rel=1e-6) and m.compressors["int8"].summable
    assert m.compressors["topk:ratio=0.01"].gamma == pytest.approx(1e-9, rel=1e-6)
    assert not m.compressors["topk:ratio=0.01"].summable
    assert m.loss_penalty == {"int8": 0.004, "topk:ratio=0.01": 0.2, "dgc:ratio=0.01,warmup=9": 0.15,
                              "onebit-adam": 0.006}
    # What only training measured borrows its codec's figures: 1-bit Adam's two-stage
    # allreduce moves the ring's volume of onebit's payload; DGC sends top-k's.
    onebit_adam, dgc = m.compressors["onebit-adam"], m.compressors["dgc:ratio=0.01,warmup=9"]
    assert onebit_adam.summable and onebit_adam.ratio == 0.032
    assert onebit_adam.gamma == pytest.approx(2e-9, rel=1e-6)
    assert not dgc.summable and dgc.ratio == 0.02 and dgc.gamma == pytest.approx(1e-9, rel=1e-6)
    assert accuracy_key("ef+topk:ratio=0.01+lz4") == "topk:ratio=0.01"


def plan(*args):
    return subprocess.run([sys.executable, "-m", "ringtrain", "plan", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_plan_compresses_on_a_slow_link_and_not_where_compute_hides_the_network(tmp_path):
    paths = synthetic_results(tmp_path)
    slow = plan("--fit", *paths, "--params", "100M", "--step-compute-s", "0.05", "--link", "100mbit", "--nodes",
                "2,8", "--json", str(tmp_path / "slow.json"))
    assert slow.returncode == 0, slow.stderr
    assert ("left out, validation loss more than 2% worse in the training sweep: dgc:ratio=0.01,warmup=9 (+15.0%), "
            "onebit (not trained), topk:ratio=0.01 (+20.0%)") in slow.stdout
    rows = json.loads((tmp_path / "slow.json").read_text())["plan"]
    # 1-bit Adam keeps the loss here and sends an eighth of int8's bytes.
    assert [r["best"]["compression"] for r in rows] == ["onebit-adam", "onebit-adam"]
    assert all(r["best"]["algorithm"] == "ring" for r in rows)
    assert all(r["best"]["step_s"] < r["uncompressed"]["step_s"] for r in rows)
    assert all(0 < r["best"]["efficiency"] <= 1 for r in rows)
    fast = plan("--fit", *paths, "--params", "1M", "--step-compute-s", "10", "--link", "10gbit", "--nodes", "4",
                "--json", str(tmp_path / "fast.json"))
    assert fast.returncode == 0, fast.stderr
    row = json.loads((tmp_path / "fast.json").read_text())["plan"][0]
    # Compute hides the network: with or without compression the step is the compute, to 0.1%.
    assert row["best"]["step_s"] == pytest.approx(10.0, rel=1e-3)
    assert row["uncompressed"]["step_s"] == pytest.approx(10.0, rel=1e-3)
    assert row["best"]["efficiency"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("args, words", [
    (["--link", "1gbps"], "argument --link: a link rate looks like 100mbit"),
    (["--link", "infgbit"], "argument --link: a link rate looks like 100mbit"),
    (["--step-compute-s", "inf"], "argument --step-compute-s: 'inf' is not allowed — a finite number > 0"),
    (["--step-compute-s", "nan"], "argument --step-compute-s: 'nan' is not allowed — a finite number > 0"),
    (["--step-compute-s", "0"], "argument --step-compute-s: '0' is not allowed — a finite number > 0"),
    (["--params", "infM"], "argument --params: looks like 124M"),
    (["--nodes", "0"], "argument --nodes: '0' is not allowed — comma-separated whole numbers >= 1"),
    (["--nodes", "2,x"], "argument --nodes: '2,x' is not allowed"),
    (["--max-loss-penalty", "nan"], "argument --max-loss-penalty: 'nan' is not allowed — a finite number >= 0"),
    (["--compressors", "zip"], "plan: --compressors: the cost model has no figures for ['zip']"),
])
def test_plan_names_the_flag_in_every_bad_input(args, words, capsys):
    from ringtrain.__main__ import main
    base = {"--params": "1M", "--step-compute-s": "1"}
    flags = [a for k, v in base.items() if k not in args for a in (k, v)] + args
    with pytest.raises(SystemExit) as stop:
        main(["plan", *flags])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err


def test_plan_needs_both_figures(capsys):
    from ringtrain.__main__ import main
    with pytest.raises(SystemExit) as stop:
        main(["plan", "--params", "1M"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("ringtrain: plan: --params and --step-compute-s are both needed — e.g. "
                                       "--params 124M --step-compute-s 0.35\n")


def test_the_packaged_cost_model_plans(tmp_path):
    assert os.path.exists(DEFAULT_MODEL)
    out = plan("--params", "124M", "--step-compute-s", "0.3", "--link", "1gbit", "--nodes", "2,4,8",
               "--json", str(tmp_path / "plan.json"))
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "plan.json").read_text())["plan"]
    assert [r["best"]["nodes"] for r in rows] == [2, 4, 8]
    for r in rows:
        best, plain = r["best"], r["uncompressed"]
        # A step is never shorter than its compute; the best choice is never slower than the plain one;
        # efficiency and speed-up follow from the step time.
        assert 0.3 <= best["step_s"] <= plain["step_s"]
        assert best["efficiency"] == pytest.approx(0.3 / best["step_s"])
        assert best["speedup"] == pytest.approx(best["nodes"] * best["efficiency"])
    # 496 MB of gradients over 1 Gbit/s cannot hide behind 0.3 s of compute: more nodes, less efficiency.
    assert rows[0]["uncompressed"]["efficiency"] > rows[-1]["uncompressed"]["efficiency"]
    assert rows[0]["uncompressed"]["efficiency"] < 0.5


def test_autotune_takes_compression_only_where_it_pays():
    params = [4 << 20] * 8  # the byte sizes of eight parameters: 32 MiB of gradients
    slow = {"none": lambda b: 1e-4 + b / 12e6, "fp16": lambda b: 1e-4 + b / 24e6 + b * 1e-9}
    scores = autotune.score(0.05, slow, params, "auto", "auto")
    assert autotune.choose(scores, True)[0] == "fp16"
    # A fast link: compression would win by less than the margin, so it is not taken.
    fast = {"none": lambda b: 1e-4 + b / 12e9, "fp16": lambda b: 1e-4 + b / 24e9}
    scores = autotune.score(0.05, fast, params, "auto", "auto")
    assert autotune.choose(scores, True)[0] == "none"
    # A fixed compressor with an automatic bucket cap only varies the cap.
    scores = autotune.score(0.05, slow, params, "fp16", "auto")
    assert {spec for spec, _ in scores} == {"fp16"} and len(scores) == len(autotune.CAPS_MB)


def test_auto_considers_what_the_sweep_measured_within_the_loss_bound():
    from ringtrain.train import TrainConfig
    dgc = "dgc:ratio=0.01,momentum=0.9,warmup=200,masking=0"
    measured = {"fp16": 0.01, "int8": 0.005, "powersgd:rank=4": 0.03, dgc: 0.19, "onebit-adam": 0.004}
    assert autotune.candidates(TrainConfig(), measured) == ["fp16", "ef+int8", "onebit-adam"]
    # 1-bit Adam replaces AdamW only; unmeasured counts as lossy; a DGC that keeps the loss is a
    # candidate where the config allows its momentum (under AdamW; not under SGD with momentum).
    assert autotune.candidates(TrainConfig(optimizer="sgd"), measured) == ["fp16", "ef+int8"]
    assert autotune.candidates(TrainConfig(), {"fp16": 0.0}) == ["fp16"]
    assert autotune.candidates(TrainConfig(), {dgc: 0.01}) == [dgc]
    assert autotune.candidates(TrainConfig(optimizer="sgd", momentum=0.9), {dgc: 0.01}) == []
    # --elastic: neither 1-bit Adam nor DGC under AdamW (their step averages after the commit).
    assert autotune.candidates(TrainConfig(elastic=True), {**measured, dgc: 0.01}) == ["fp16", "ef+int8"]


def test_results_of_another_shape_are_refused_by_name(tmp_path):
    old = tmp_path / "allreduce_n2_1gbit.json"
    old.write_text(json.dumps({"benchmark": "allreduce", "world_size": 2, "rows": []}))
    with pytest.raises(ValueError, match=f"{old}: not a ringtrain result of format 2 — convert"):
        fit_cost_model([str(old)])
