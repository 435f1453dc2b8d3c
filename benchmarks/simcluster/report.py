"""Tables, plots, targets, the fitted cost model and its validation, from one sweep directory.

    python benchmarks/simcluster/report.py benchmarks/results/simcluster-full

Writes into the directory: report.md (every table and target, also printed),
costmodel.json (the alpha-beta-gamma fit), allreduce_busbw.png,
convergence_loss.png and bucket_step_time.png.
"""
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from ringtrain.bench.sizes import format_bytes  # noqa: E402
from ringtrain.plan.costmodel import blend  # noqa: E402
from ringtrain.plan.fit import accuracy_key, fit_loaded, step_cases, world_of  # noqa: E402
from ringtrain.results import link_rate, load_result  # noqa: E402

MAX_LOSS_PENALTY = 0.02
PLAN_TOLERANCE = 0.25


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


def node_aware_section(say, results):
    say("## (d) node-aware allreduce: hosts of several ranks")
    say("Milliseconds, median of the repeats; the two-level scheme sends one buffer per host over each link.")
    say()
    for _, data, rate, _ in results:
        meta = data["meta"]
        say(f"### {meta['hosts']} hosts x {meta['ranks_per_host']} ranks, {rate_name(rate)}")
        by = {(r["algorithm"], r["size"]): r for r in data["rows"]}
        rows = []
        for size in sorted({r["size"] for r in data["rows"]}):
            mpi, ring, hier = (by.get((a, size)) for a in ("MPI_Allreduce", "ring", "hierarchical"))
            if mpi and ring and hier:
                rows.append([format_bytes(size), f"{mpi['time_us'] / 1e3:.1f}", f"{ring['time_us'] / 1e3:.1f}",
                             f"{hier['time_us'] / 1e3:.1f}", f"{hier['vs_mpi']:.2f}x",
                             f"{ring['time_us'] / hier['time_us']:.2f}x"])
        say.table(["size", "MPI_Allreduce", "flat ring", "hierarchical", "vs MPI", "vs flat ring"], rows)


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
        for row, _, compute, serial, ideal in step_cases(model, data, rate):
            predicted = blend(serial, ideal, overlap)
            error = 1e3 * predicted / row["step_ms"] - 1
            errors.append(error)
            rows.append([f"n={n} {rate_name(rate)} {os.path.basename(path)[:-5]}", row["compression"],
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


def plots(out_dir, allreduce, convergence):
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
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("usage: report.py SWEEP_DIRECTORY")
    out_dir = sys.argv[1]
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
    node_aware = load(out_dir, "allreduce", two_level=True)
    if node_aware:
        node_aware_section(say, node_aware)
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
        plots(out_dir, allreduce, convergence)
        say("Plots: allreduce_busbw.png, convergence_loss.png, bucket_step_time.png")
    except ImportError:
        say("(no plots: matplotlib is not installed; pip install 'ringtrain[bench]')")
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(say.lines) + "\n")


if __name__ == "__main__":
    main()
