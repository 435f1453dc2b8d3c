"""Fitting the cost model to sweep results (the JSON that ``bench allreduce``, ``compression`` and
``convergence`` write, with the link rate recorded by the simulated cluster's sweep).

- alpha and each rate's efficiency: weighted least squares of the ring's time
  against ``2 (n-1) alpha + 2 (n-1)/n S beta`` over sizes from MIN_FIT_BYTES,
  weighted by 1/time so small and large messages count alike.
- gamma per compressor: what its measured compressed allreduce took beyond
  the model's wire time, per input byte (median over sizes and runs); where
  the training sweep trained with it, what its steps took beyond compute and
  wire instead, which is what a planner needs.
- the overlap: how much of the ideal bucket pipeline the uncompressed
  training steps reached (least squares, 0 to 1).
- the intra-node alpha and beta: the same least squares over ``bench allreduce``
  results without a link (one host, shared memory), for the two-level model.
- the loss penalty per compressor: validation loss against the uncompressed
  run of the same training sweep (the worst over the sweep's links), keyed
  without ``ef`` and ``lz4`` (``accuracy_key``): lz4 is lossless, and a
  compressor trained with error feedback is planned with it.
"""
import os

import numpy as np

from ..results import link_rate, load_result
from .costmodel import ONEBIT_ADAM, Compression, CostModel, blend, step_bounds

MIN_FIT_BYTES = 64 << 10


def world_of(data: dict) -> int:
    return int(data["meta"]["world_size"])


def compression_kind(spec: str) -> Compression:
    """How a compressor spec travels (summable or allgathered, messages per call); ratio and gamma still 0."""
    from ..compression import Path, get as compression_get
    # The compressor says how it travels (its path); note that ef+ chains gather
    # (ErrorFeedback has no ring path), whatever their inner compressor does alone.
    codec = compression_get(spec)
    return Compression(ratio=0.0, gamma=0.0, messages=codec.messages, summable=codec.path is not Path.GATHERED)


def accuracy_key(spec: str) -> str:
    """The part of a spec that decides accuracy: without lz4 (lossless) and ef (which only helps)."""
    parts = [p for p in spec.split("+") if p not in ("ef", "lz4")]
    return "+".join(parts) or "none"


def fit_cost_model(paths: list) -> CostModel:
    """The cost model from these result files (not ``ringtrain.fit``, which trains).

    Results over a link with one rank per host fit the link; allreduce results of
    one host without a link fit the intra-node terms; two-level results are what
    the model predicts (``two_level_cases``), so they are not fitted.
    """
    loaded, shared_memory = [], []
    for path in paths:
        data = load_result(path)
        rate, meta = link_rate(data), data["meta"]
        if rate is not None and meta.get("ranks_per_host", 1) == 1:
            loaded.append((path, data, rate))
        elif rate is None and meta.get("hosts", 1) == 1 and data.get("benchmark") == "allreduce":
            shared_memory.append((path, data))
    model = fit_loaded(loaded)
    if shared_memory:
        fit_intra(model, [d for _, d in shared_memory])
        names = ", ".join(sorted(os.path.basename(p) for p, _ in shared_memory))
        model.source += f"; intra-node: {names}"
        model.origin["intra_alpha"] = model.origin["intra_beta"] = f"fitted to {names} (shared memory)"
    return model


def fit_loaded(loaded: list) -> CostModel:
    """The cost model from ``(path, result, link rate)`` triples already read."""
    model = CostModel(alpha=0.0, source=", ".join(sorted(os.path.basename(p) for p, _, _ in loaded)))
    _fit_links(model, [(d, r) for _, d, r in loaded if d.get("benchmark") == "allreduce"])
    _fit_compressors(model, [(d, r) for _, d, r in loaded if d.get("benchmark") == "compression"])
    convergence = [(d, r) for _, d, r in loaded if d.get("benchmark") == "convergence"]
    _fit_losses(model, [d for d, _ in convergence])
    _derive_trained(model)
    model.overlap = fit_overlap(model, convergence)
    _calibrate_gammas(model, convergence)
    fitted = f"fitted to {len(loaded)} sweep results (listed in source)"
    model.origin.update({name: fitted for name in ("alpha", "efficiency", "overlap", "gamma_none", "gamma",
                                                    "loss_penalty")})
    return model


def _ring_terms(data) -> tuple[float, float] | None:
    """Least-squares (alpha, beta) of a result's ring rows against 2 (n-1) alpha + 2 (n-1)/n S beta."""
    n = world_of(data)
    rows = [r for r in data["rows"] if r["algorithm"] == "ring" and r["size"] >= MIN_FIT_BYTES]
    if n < 2 or len(rows) < 2:
        return None
    size = np.array([r["size"] for r in rows], float)
    t = np.array([r["time_us"] for r in rows]) * 1e-6
    # Weighted by 1/time: each row's relative error counts alike.
    design = np.stack([np.full_like(size, 2 * (n - 1)), 2 * (n - 1) / n * size], axis=1) / t[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    return alpha, beta


def fit_intra(model, results) -> None:
    terms = [t for t in (_ring_terms(d) for d in results) if t is not None]
    if terms:
        model.intra_alpha = float(max(1e-7, np.median([a for a, _ in terms])))
        model.intra_beta = float(max(1e-13, np.median([b for _, b in terms])))


def _fit_links(model, results) -> None:
    if not results:
        raise ValueError("fitting the cost model needs at least one bench allreduce result on a shaped link")
    alphas, efficiency = [], {}
    for data, rate in results:
        terms = _ring_terms(data)
        if terms is None:
            continue
        alpha, beta = terms
        alphas.append(max(alpha, 1e-6))
        efficiency.setdefault(rate, []).append(8.0 / (rate * beta))
    if not alphas:
        raise ValueError("no bench allreduce result has the ring at two or more sizes >= 64 KiB on 2+ ranks")
    model.alpha = float(np.median(alphas))
    model.efficiency = {str(rate): float(np.mean(v)) for rate, v in sorted(efficiency.items())}


def _fit_compressors(model, results) -> None:
    gammas, ratios = {}, {}
    for data, rate in results:
        n = world_of(data)
        for row in data["rows"]:
            spec, size = row["compressor"], row["size"]
            kind = compression_kind(spec)
            kind.ratio = row["wire_ratio"]
            model.compressors[spec] = kind
            wire = model.compressed_time(size, n, rate, spec)  # gamma is still 0 here
            gammas.setdefault(spec, []).append(max(0.0, (row["allreduce_s"] - wire) / size / contention(data)))
            ratios.setdefault(spec, []).append(row["wire_ratio"])
    for spec in gammas:
        c = model.compressors[spec]
        c.ratio, c.gamma = float(np.median(ratios[spec])), float(np.median(gammas[spec]))


def trained_key(row: dict) -> str | None:
    """What a convergence row trained with, as the cost model names it: a compressor spec, ONEBIT_ADAM, or None."""
    if row["system"] == ONEBIT_ADAM:
        return ONEBIT_ADAM
    spec = row["compression"]
    if row["system"] == "ringtrain" and spec != "none" and not spec.startswith("auto"):
        return accuracy_key(spec)
    return None


def _fit_losses(model, results) -> None:
    for data in results:
        for row in data["rows"]:
            key = trained_key(row)
            if key is not None:
                model.loss_penalty[key] = max(model.loss_penalty.get(key, -1.0), row["val_loss_vs_none"])


def _derive_trained(model) -> None:
    """Figures for what training measured but ``bench compression`` cannot run alone.

    1-bit Adam's allreduce (onebit_allreduce.py) sends onebit's payload through
    an alltoall and an allgather: the ring's volume, 2 (n-1)/n of it, in 2 (n-1)
    messages, with about onebit's codec work. DGC sends top-k's payload at its
    final density. Their gammas are then calibrated on the training rows.
    """
    onebit = model.compressors.get("onebit")
    if onebit is not None and ONEBIT_ADAM in model.loss_penalty:
        model.compressors[ONEBIT_ADAM] = Compression(ratio=onebit.ratio, gamma=onebit.gamma, messages=1,
                                                     summable=True)
    for key in model.loss_penalty:
        if key.startswith("dgc") and key not in model.compressors:
            from ..compression import get as compression_get
            topk = model.compressors.get(f"topk:ratio={compression_get(key).ratio:g}")
            if topk is not None:
                model.compressors[key] = Compression(ratio=topk.ratio, gamma=topk.gamma, messages=1,
                                                     summable=False)


def contention(data: dict) -> float:
    """Ranks per core of a result whose simulated hosts all share one machine's cores (at least 1)."""
    meta = data["meta"]
    ranks = meta.get("world_size") or meta.get("hosts")
    if ranks and meta.get("cores"):
        return max(1.0, ranks / meta["cores"])
    return 1.0


def step_cases(model, data: dict, rate: float):
    """(row, compressor key, compute, no-overlap, ideal-pipeline seconds) per ringtrain row of a convergence result.

    Compute is the result's "compute" row; rows whose compressor the model has
    no figures for are skipped. On two levels (several ranks per host) a row
    run with node_aware "auto" or "on" is modelled node-aware, "off" flat.
    """
    from ..reducer.buckets import bucket_bytes
    compute = next((r for r in data["rows"] if r["system"] == "compute"), None)
    if compute is None or "param_bytes" not in data:
        return []
    k = int(data["meta"].get("ranks_per_host", 1))
    n, c, share = world_of(data) // k, compute["step_ms"] / 1e3, contention(data)
    cases = []
    for row in data["rows"]:
        if row["system"] == ONEBIT_ADAM:
            key = ONEBIT_ADAM if ONEBIT_ADAM in model.compressors else None
        else:
            key = known_spec(model, row["compression"].removeprefix("auto="))
        if row["system"] not in ("ringtrain", ONEBIT_ADAM) or key is None:
            continue
        node_aware = k > 1 and row.get("node_aware", "auto") != "off" and key != ONEBIT_ADAM  # 1-bit Adam is flat
        algorithm = "hierarchical" if node_aware else "ring"
        buckets = bucket_bytes(data["param_bytes"], int(row["bucket_cap_mb"] * 1e6))
        serial, ideal = step_bounds(c, buckets, lambda b, key=key: model.compressed_time(
            b, n, rate, key, share, algorithm=algorithm, k=k, node_aware=node_aware))
        cases.append((row, key, c, serial, ideal))
    return cases


def known_spec(model, spec: str) -> str | None:
    """``spec`` if the model has figures for it, or can derive them; else None.

    A spec that differs from a measured one only by ef or lz4 (``accuracy_key``)
    borrows its ratio and gamma, but travels as the spec itself does: ``ef+int8``
    is allgathered (error feedback has no ring path), while ``int8`` rides the ring.
    """
    if spec == "none" or spec in model.compressors:
        return spec
    measured = model.compressors.get(accuracy_key(spec))
    if measured is None:
        return None
    kind = compression_kind(spec)
    model.compressors[spec] = Compression(ratio=measured.ratio, gamma=measured.gamma, messages=kind.messages,
                                          summable=kind.summable)
    return spec


def fit_overlap(model, convergence) -> float:
    """The overlap (0..1) that best explains the uncompressed step times, by least squares of relative errors."""
    num = den = 0.0
    for data, rate in convergence:
        for row, key, _, serial, ideal in step_cases(model, data, rate):
            if key != "none":
                continue
            measured = row["step_ms"] / 1e3
            # measured ~ serial - overlap (serial - ideal), in units of the measurement
            d, r = (serial - ideal) / measured, (serial - measured) / measured
            num, den = num + d * r, den + d * d
    return float(min(1.0, max(0.0, num / den))) if den > 0 else 1.0


def _calibrate_gammas(model, convergence) -> None:
    """gamma_none, then each compressor's gamma, as training pays them: step time beyond compute and wire.

    In training the reducer copies gradients, and a codec runs beside backward
    and the other ranks' compute, which the stand-alone benchmarks do not see.
    Per gradient byte and per unit of contention (ranks per core).
    """
    def extra(wanted):
        out = []
        for data, rate in convergence:
            total = float(sum(data.get("param_bytes", []))) * contention(data)
            for row, key, _, serial, ideal in step_cases(model, data, rate):
                if total and key == wanted:
                    out.append((row["step_ms"] / 1e3 - blend(serial, ideal, model.overlap)) / total)
        return out
    model.gamma_none = 0.0
    none = extra("none")
    if none:
        model.gamma_none = max(0.0, float(np.median(none)))
    for key, c in model.compressors.items():
        gamma, c.gamma = c.gamma, 0.0
        values = extra(key)
        c.gamma = max(0.0, float(np.median(values))) if values else gamma
