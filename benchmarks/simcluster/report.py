"""Tables, plots, targets, the fitted cost model and its validation, from one sweep directory.

    python benchmarks/simcluster/report.py benchmarks/results/simcluster-full [--shm allreduce_n2_shm.json]

Writes into the directory: report.md (every table and target, also printed),
costmodel.json (the alpha-beta-gamma fit), allreduce_busbw.png,
convergence_loss.png, bucket_step_time.png and, with two-level results,
node_aware_busbw.png. ``--shm`` names a shared-memory ``bench allreduce``
result for the two-level model's intra-node terms (default: the one in
benchmarks/results).
"""
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from ringtrain.bench.sizes import format_bytes  # noqa: E402
from ringtrain.plan.costmodel import ONEBIT_ADAM, blend  # noqa: E402
from ringtrain.plan.fit import accuracy_key, fit_intra, fit_loaded, step_cases, world_of  # noqa: E402
from ringtrain.plan.two_level import two_level_cases  # noqa: E402
from ringtrain.results import link_rate, load_result  # noqa: E402

MAX_LOSS_PENALTY = 0.02
PLAN_TOLERANCE = 0.25
NODE_AWARE_SPEEDUP = 1.35   # hierarchical busbw against MPI_Allreduce and the flat ring, 4-64 MiB
LINK_BYTES_SLACK = 1.05     # link bytes per host per operation against the two-level bound
STEP_RATIO = 0.8            # node-aware training step against the flat ring's
SHM_DEFAULT = os.path.join(os.path.dirname(HERE), "results", "allreduce_n2_shm.json")


class Report:
    def __init__(self):
        self.lines = []

    def __call__(self, text=""):
        print(text)
        self.lines.append(text)

    def table(self, header, rows):
        self("| " + " | ".join(header) + " |")
        self("|" + "---|" * len(header))
        for row in rows:
            self("| " + " | ".join(str(c) for c in row) + " |")
        self()


def load(out_dir, kind, two_level=False):
    """(path, result, link rate, world size) of each result with a link; hosts of one rank, or of several."""
    results = []
    for path in sorted(glob.glob(os.path.join(out_dir, f"{kind}_*.json"))):
        data = load_result(path)
        rate = link_rate(data)
        # Shared-memory results have no link to compare with; two-level ones have their own section
        # and stay out of the single-level cost-model fit.
        if rate is not None and (data["meta"].get("ranks_per_host", 1) > 1) == two_level:
            results.append((path, data, rate, world_of(data)))
    return sorted(results, key=lambda r: (r[2], r[3]))


def rate_name(rate):
    return f"{rate / 1e9:g} Gbit/s" if rate >= 1e9 else f"{rate / 1e6:g} Mbit/s"


def allreduce_section(say, results):
    say("## (a) allreduce: busbw against native MPI_Allreduce")
    say("busbw = bytes x 2(n-1)/n / time; '% link' is busbw over the link rate. Median of the repeats.")
    say()
    targets = []
    for path, data, rate, n in results:
        link = rate / 8 / 1e9
        algorithms = list(dict.fromkeys(r["algorithm"] for r in data["rows"]))
        by = {(r["algorithm"], r["size"]): r for r in data["rows"]}
        sizes = sorted({r["size"] for r in data["rows"]})
        say(f"### n={n}, {rate_name(rate)} ({os.path.basename(path)})")
        header = ["size"] + [f"{a} GB/s (% link)" for a in algorithms] + ["ring vs MPI"]
        rows = []
        for s in sizes:
            cells = [format_bytes(s)]
            for a in algorithms:
                r = by[(a, s)]
                cells.append(f"{r['busbw']:.3f} ({100 * r['busbw'] / link:.0f}%)")
            cells.append(f"{by[('ring', s)]['vs_mpi']:.2f}x" if ("ring", s) in by else "-")
            rows.append(cells)
        say.table(header, rows)
        if rate == 1e9:
            big = [by[("ring", s)] for s in sizes if s >= 1 << 20 and ("ring", s) in by]
            if big:
                worst_link = min(r["busbw"] / link for r in big)
                worst_mpi = min(r["vs_mpi"] for r in big)
                targets.append((f"ring at 1 Gbit/s, n={n}, >= 1 MiB: busbw >= 0.9x link and >= 0.95x MPI",
                                f"{worst_link:.2f}x link, {worst_mpi:.2f}x MPI (worst size)",
                                worst_link >= 0.9 and worst_mpi >= 0.95))
    return targets


def node_aware_section(say, results, convergence, model):
    """Tables and targets of the two-level results: allreduce, link bytes, training, the model's predictions."""
    say("## (d) node-aware: hosts of several ranks")
    say("Milliseconds, median of the repeats; the two-level scheme sends 2(N-1)/N of the buffer per host over "
        "its link (N hosts), the flat ring 2(NK-1)/(NK) with K ranks per host. Link bytes: the busiest host's "
        "interface counter per operation, frame headers and acknowledgements included, over the bound.")
    say()
    targets = []
    for _, data, rate, _ in results:
        meta = data["meta"]
        say(f"### allreduce, {meta['hosts']} hosts x {meta['ranks_per_host']} ranks, {rate_name(rate)}")
        by = {(r["algorithm"], r["size"]): r for r in data["rows"]}
        rows, speedups, link = [], [], []
        for size in sorted({r["size"] for r in data["rows"]}):
            mpi, ring, hier = (by.get((a, size)) for a in ("MPI_Allreduce", "ring", "hierarchical"))
            if not (mpi and ring and hier):
                continue
            row = [format_bytes(size), f"{mpi['time_us'] / 1e3:.1f}", f"{ring['time_us'] / 1e3:.1f}",
                   f"{hier['time_us'] / 1e3:.1f}", f"{hier['vs_mpi']:.2f}x", f"{ring['time_us'] / hier['time_us']:.2f}x"]
            if "link_bytes_vs_bound" in hier:
                row += [f"{r['link_bytes_vs_bound']:.3f}" for r in (mpi, ring, hier)]
                if size >= 1 << 20:
                    link.append(hier["link_bytes_vs_bound"])
            rows.append(row)
            if 4 << 20 <= size <= 64 << 20:
                speedups.append((hier["vs_mpi"], ring["time_us"] / hier["time_us"]))
        header = ["size", "MPI_Allreduce", "flat ring", "hierarchical", "vs MPI", "vs flat ring"]
        say.table(header + (["link/bound MPI", "flat", "hier"] if link else []), rows)
        if speedups:
            vs_mpi, vs_ring = [a for a, _ in speedups], [b for _, b in speedups]
            targets.append((f"hierarchical busbw >= {NODE_AWARE_SPEEDUP}x MPI_Allreduce, 4-64 MiB, "
                            f"{meta['hosts']}x{meta['ranks_per_host']} {rate_name(rate)}",
                            f"{min(vs_mpi):.2f}-{max(vs_mpi):.2f}x", min(vs_mpi) >= NODE_AWARE_SPEEDUP))
            targets.append((f"hierarchical busbw >= {NODE_AWARE_SPEEDUP}x the flat ring, 4-64 MiB",
                            f"{min(vs_ring):.2f}-{max(vs_ring):.2f}x", min(vs_ring) >= NODE_AWARE_SPEEDUP))
        if link:
            targets.append((f"hierarchical link bytes per host <= {LINK_BYTES_SLACK} x 2(N-1)/N x buffer, >= 1 MiB",
                            f"{min(link):.3f}-{max(link):.3f} of the bound", max(link) <= LINK_BYTES_SLACK))
    for _, data, rate, _ in convergence:
        targets += _node_aware_training(say, data, rate)
    if model is not None:
        cases = [c for _, data, rate, _ in results + convergence for c in two_level_cases(model, data, rate)]
        say("### the two-level model's predictions (fitted on single-level and shared-memory sweeps only)")
        say.table(["run", "predicted ms", "measured ms", "error"],
                  [[c["what"], f"{1e3 * c['predicted_s']:.1f}", f"{1e3 * c['measured_s']:.1f}",
                    f"{100 * c['error']:+.0f}%"] for c in cases])
        ours = [c for c in cases if "MPI" not in c["what"]]
        if ours:
            worst = max(ours, key=lambda c: abs(c["error"]))
            within = sum(abs(c["error"]) <= PLAN_TOLERANCE for c in ours)
            targets.append((f"two-level model predicts ringtrain's 2-level runs within +-{100 * PLAN_TOLERANCE:.0f}%",
                            f"{within}/{len(ours)} within; worst {100 * worst['error']:+.0f}% ({worst['what']})",
                            within == len(ours)))
    return targets


def _node_aware_training(say, data, rate):
    meta = data["meta"]
    say(f"### training, {meta['hosts']} hosts x {meta['ranks_per_host']} ranks, {rate_name(rate)}")
    say("node-aware auto: compression only across nodes; off: the flat ring, compressing every hop.")
    rows, targets = [], []
    by = {(r["system"], r["compression"], r.get("node_aware", "auto")): r for r in data["rows"]}
    for (system, spec, how), r in by.items():
        rows.append([system, spec, how, f"{r['step_ms']:.1f}", f"{r['steps_per_s']:.2f}", f"{r['val_loss']:.4f}"])
        flat = by.get((system, spec, "off"))
        if system == "ringtrain" and how == "auto" and flat:
            speed, loss = r["steps_per_s"] / flat["steps_per_s"], r["val_loss"] / flat["val_loss"] - 1
            if spec == "none":
                targets.append((f"training step node-aware <= {STEP_RATIO}x the flat ring's",
                                f"{r['step_ms'] / flat['step_ms']:.2f}x", r["step_ms"] / flat["step_ms"] <= STEP_RATIO))
            else:
                targets.append((f"{spec} across nodes only: steps/s and validation loss against every hop",
                                f"{speed:.2f}x steps/s, loss {100 * loss:+.2f}%", speed >= 1 and loss <= 0))
    say.table(["system", "compression", "node-aware", "step ms", "steps/s", "val loss"], rows)
    return targets


def compression_section(say, results):
    say("## (b) compressed allreduce against the uncompressed ring and MPI")
    for path, data, rate, n in results:
        say(f"### n={n}, {rate_name(rate)}")
        rows = [[r["compressor"], format_bytes(r["size"]), f"{r['wire_ratio']:.4f}", f"{1e3 * r['allreduce_s']:.1f}",
                 f"{r['ring_ms']:.1f}", f"{r['mpi_ms']:.1f}", f"{r['vs_ring']:.2f}x", f"{r['vs_mpi']:.2f}x"]
                for r in data["rows"]]
        say.table(["compressor", "size", "wire", "ms", "ring ms", "MPI ms", "vs ring", "vs MPI"], rows)


def convergence_section(say, results):
    say("## (c) training: steps/s and loss per bucket size and compressor, against DDP on gloo")
    targets = []
    for path, data, rate, n in results:
        a = data["meta"]["args"]
        say(f"### n={n}, {rate_name(rate)}: GPT width {a['width']}, {a['layers']} layers, batch {a['batch_size']}x"
            f"{a['context']} per rank, {a['steps']} steps")
        rows = [[r["system"], r["compression"], f"{r['bucket_cap_mb']:g}", f"{r['step_ms']:.1f}",
                 f"{r['steps_per_s']:.2f}", f"{r['speedup_vs_none']:.2f}x", f"{r['val_loss']:.4f}",
                 f"{100 * r['val_loss_vs_none']:+.1f}%"] for r in data["rows"]]
        say.table(["system", "compression", "bucket MB", "step ms", "steps/s", "vs none", "val loss", "vs none"], rows)
        rt = [r for r in data["rows"] if r["system"] == "ringtrain"]
        good = [r for r in rt if r["val_loss_vs_none"] <= MAX_LOSS_PENALTY and not r["compression"].startswith("auto")]
        compressed = [r for r in good if r["compression"] != "none"]
        if rate == 1e9 and n == 4 and compressed:
            best = max(compressed, key=lambda r: r["speedup_vs_none"])
            targets.append((f"training at 1 Gbit/s, 4 ranks, batch {a['batch_size']}x{a['context']}: best compressor "
                            "within 2% loss at >= 2x steps/s",
                            f"{best['compression']}: {best['speedup_vs_none']:.2f}x steps/s, loss "
                            f"{100 * best['val_loss_vs_none']:+.1f}%", best["speedup_vs_none"] >= 2.0))
            ddp_psgd = next((r for r in data["rows"] if r["system"] == "ddp" and r["compression"] != "none"), None)
            if ddp_psgd:
                targets.append(("the same against DDP with its PowerSGD hook (reported)",
                                f"{best['steps_per_s'] / ddp_psgd['steps_per_s']:.2f}x its steps/s; DDP+PowerSGD "
                                f"{ddp_psgd['speedup_vs_none']:.2f}x, loss {100 * ddp_psgd['val_loss_vs_none']:+.1f}%",
                                None))
        auto = next((r for r in rt if r["compression"].startswith("auto")), None)
        if auto and good:
            fastest = min(good, key=lambda r: r["step_ms"])
            slower = auto["step_ms"] / fastest["step_ms"] - 1
            targets.append((f"auto within 5% of the best fixed choice (n={n}, {rate_name(rate)})",
                            f"auto ({auto['compression']}, {auto['bucket_cap_mb']:g} MB) {auto['step_ms']:.1f} ms "
                            f"vs {fastest['compression']} {fastest['bucket_cap_mb']:g} MB {fastest['step_ms']:.1f} ms: "
                            f"{100 * slower:+.1f}%", slower <= 0.05))
    return targets


def validation_section(say, loaded, results):
    say("## Planner validation: the cost model's step time against the measured one")
    say("Compute time per step is the sweep's 'compute' variant (every rank training alone, at the same time). "
        "Each training run is predicted by a cost model fitted without it (leave one out: its overlap and "
        "training gammas come from the other runs), so no run is predicted from its own step times.")
    say()
    if len(results) < 2:
        say("(one training run: nothing to fit a model on without it. `sweep.py --full` has four.)")
        say()
        return []
    rows, errors = [], []
    for path, data, rate, n in results:
        model = fit_loaded([entry for entry in loaded if entry[0] != path])
        overlap = model.overlap
        for row, key, compute, serial, ideal in step_cases(model, data, rate):
            predicted = blend(serial, ideal, overlap)
            error = 1e3 * predicted / row["step_ms"] - 1
            errors.append(error)
            label = key if key == ONEBIT_ADAM else row["compression"]  # an optimizer: its row says none
            rows.append([f"n={n} {rate_name(rate)} {os.path.basename(path)[:-5]}", label,
                         f"{row['bucket_cap_mb']:g}", f"{1e3 * compute:.1f}", f"{overlap:.2f}",
                         f"{1e3 * predicted:.1f}", f"{row['step_ms']:.1f}", f"{100 * error:+.0f}%"])
    say.table(["run", "compression", "bucket MB", "compute ms", "overlap", "predicted ms", "measured ms", "error"],
              rows)
    if not errors:
        return []
    worst = max(errors, key=abs)
    inside = sum(abs(e) <= PLAN_TOLERANCE for e in errors)
    return [("planner predicts step time within +-25%",
             f"{inside}/{len(errors)} within; worst {100 * worst:+.0f}%", inside == len(errors))]


def plots(out_dir, allreduce, convergence, node_aware=()):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        plt.close(fig)

    def panels(results, width, draw, xlabel, ylabel, name):
        """One panel per (n, link) result, side by side, sharing the y label and the first legend."""
        fig, axes = plt.subplots(1, len(results), figsize=(width * len(results), 4), squeeze=False)
        for ax, (_, data, rate, n) in zip(axes[0], results):
            draw(ax, data, rate)
            ax.set_title(f"n={n}, {rate_name(rate)}")
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        axes[0][0].legend(fontsize=7)
        save(fig, name)

    def busbw(ax, data, rate):
        for alg in dict.fromkeys(r["algorithm"] for r in data["rows"]):
            pts = sorted((r["size"], r["busbw"]) for r in data["rows"] if r["algorithm"] == alg)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=alg)
        ax.axhline(rate / 8e9, color="black", ls="--", lw=1, label="link rate")
        ax.set_xscale("log", base=2)

    def losses(ax, data, rate):
        for r in data["rows"]:
            if r["system"] == "compute" or (r["system"] == "ringtrain" and r["compression"] == "none"
                                            and r["bucket_cap_mb"] != data["meta"]["args"]["bucket_cap_mb"]):
                continue
            t, loss = zip(*r["curve"])
            ax.plot(t, _smooth(loss), lw=1.2, label=f"{r['system']} {r['compression']}")

    if allreduce:
        panels(allreduce, 4.2, busbw, "message bytes", "busbw (GB/s)", "allreduce_busbw.png")
    if node_aware:
        fig, axes = plt.subplots(1, len(node_aware), figsize=(5.5 * len(node_aware), 4), squeeze=False)
        for ax, (_, data, rate, _) in zip(axes[0], node_aware):
            for alg, label in (("hierarchical", "hierarchical (node-aware)"), ("ring", "flat ring"),
                               ("MPI_Allreduce", "MPI_Allreduce")):
                pts = sorted((r["size"], r["busbw"]) for r in data["rows"] if r["algorithm"] == alg)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
            # busbw counts 2(n-1)/n of the buffer per rank (n ranks); at the link rate a host moving
            # 2(N-1)/N of it (N hosts, the two-level bound) reaches that ratio times the rate, the flat ring the rate.
            n, hosts = data["meta"]["world_size"], data["meta"]["hosts"]
            ax.axhline(rate / 8e9 * ((n - 1) / n) / ((hosts - 1) / hosts), color="black", ls="--", lw=1,
                       label="link rate, two-level schedule")
            ax.axhline(rate / 8e9, color="gray", ls=":", lw=1, label="link rate, flat ring")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{data['meta']['hosts']} hosts x {data['meta']['ranks_per_host']} ranks, {rate_name(rate)}")
            ax.set_xlabel("message bytes")
            ax.set_ylabel("busbw (GB/s)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, "node_aware_busbw.png")
    if convergence:
        panels(convergence, 5, losses, "wall time (s)", "training loss (moving average)", "convergence_loss.png")
        fig, ax = plt.subplots(figsize=(6, 4))
        for path, data, rate, n in convergence:
            pts = sorted((r["bucket_cap_mb"], r["step_ms"]) for r in data["rows"]
                         if r["system"] == "ringtrain" and r["compression"] == "none")
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"n={n} {rate_name(rate)}")
            ddp = next((r for r in data["rows"] if r["system"] == "ddp" and r["compression"] == "none"), None)
            if ddp:
                ax.axhline(ddp["step_ms"], color=line.get_color(), ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("bucket cap (MB)")
        ax.set_ylabel("step time (ms); dotted: DDP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "bucket_step_time.png")


def _smooth(values, width=10):
    out, acc = [], []
    for v in values:
        acc = (acc + [v])[-width:]
        out.append(sum(acc) / len(acc))
    return out


def main():
    args = sys.argv[1:]
    shm = SHM_DEFAULT
    if len(args) == 3 and args[1] == "--shm":
        args, shm = args[:1], args[2]
    if len(args) != 1 or not os.path.isdir(args[0]):
        sys.exit("usage: report.py SWEEP_DIRECTORY [--shm SHARED_MEMORY_ALLREDUCE.json]")
    out_dir = args[0]
    say = Report()
    allreduce, compression, convergence = (load(out_dir, k) for k in ("allreduce", "compression", "convergence"))
    if not (allreduce or compression or convergence):
        sys.exit(f"report.py: no sweep results in {out_dir}")
    first = (allreduce or compression or convergence)[0][1]
    meta = first["meta"]
    say(f"# Simulated-cluster sweep: {os.path.basename(os.path.abspath(out_dir))}")
    say(f"Measured {meta['date']} on {meta.get('host', '?')}, {meta['mpi_library'].splitlines()[0]}.")
    say()
    targets = allreduce_section(say, allreduce) if allreduce else []
    two_level = load(out_dir, "allreduce", two_level=True), load(out_dir, "convergence", two_level=True)
    if any(two_level):
        two_level_model = None
        if allreduce:
            two_level_model = fit_loaded([(p, d, r) for p, d, r, _ in allreduce + compression + convergence])
            if os.path.exists(shm):
                fit_intra(two_level_model, [load_result(shm)])
        targets += node_aware_section(say, *two_level, two_level_model)
    if compression:
        compression_section(say, compression)
    if convergence:
        targets += convergence_section(say, convergence)
    if allreduce:
        loaded = [(path, data, rate) for path, data, rate, _ in allreduce + compression + convergence]
        model = fit_loaded(loaded)
        model.save(os.path.join(out_dir, "costmodel.json"))
        say("## Cost model (costmodel.json)")
        say(f"alpha {1e6 * model.alpha:.0f} us; link efficiency " + ", ".join(
            f"{rate_name(float(r))} {100 * e:.0f}%" for r, e in model.efficiency.items())
            + f"; overlap {model.overlap:.2f} of the ideal pipeline")
        say.table(["compressor", "wire ratio", "gamma ns/byte", "summable", "loss penalty"],
                  [[k, f"{c.ratio:.4f}", f"{1e9 * c.gamma:.2f}", c.summable,
                    f"{100 * model.loss_penalty[accuracy_key(k)]:+.1f}%"
                    if accuracy_key(k) in model.loss_penalty else "-"] for k, c in model.compressors.items()])
        if convergence:
            targets += validation_section(say, loaded, convergence)
    say("## Targets")
    say.table(["target", "measured", "met"],
              [[t, m, "reported" if ok is None else ("yes" if ok else "NO")] for t, m, ok in targets])
    try:
        plots(out_dir, allreduce, convergence, two_level[0])
        say("Plots: allreduce_busbw.png, convergence_loss.png, bucket_step_time.png"
            + (", node_aware_busbw.png" if two_level[0] else ""))
    except ImportError:
        say("(no plots: matplotlib is not installed; pip install 'ringtrain[bench]')")
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(say.lines) + "\n")


if __name__ == "__main__":
    main()
