"""``python -m ringtrain plan``: predicted step time, scaling and the best settings per node count.

    python -m ringtrain plan --params 124M --step-compute-s 0.35 --link 10gbit --nodes 2,4,8,16
    python -m ringtrain plan --params 124M --step-compute-s 0.35 --nodes 4 --ranks-per-node 8 --calibrate

For each node count it searches algorithm x bucket size x compressor with the
cost model (``costmodel.py``) and prints the fastest uncompressed choice and
the fastest overall. Compressors whose measured loss penalty (from the
training sweep) exceeds ``--max-loss-penalty``, or that the sweep never
trained with, are left out unless named in ``--compressors``, and said so.
``onebit-adam`` stands for ``--optimizer onebit-adam`` (its momentum's
two-stage sign allreduce, after the warm-up), where the sweep trained with it.
Scaling efficiency is compute time / step time: 1.0 means the network costs
nothing; the speed-up over one node is nodes x efficiency.

``--ranks-per-node K`` plans n nodes of K ranks (``--step-compute-s`` is then
one rank's step): the node-aware ring joins the algorithms, and each
compressor is tried both across nodes only and on every hop. ``--calibrate``
times the codecs and the reducer's copies on this machine, single-process, in
a few seconds, and uses those instead of the fitted values; the output says
where each coefficient came from.

The cost model is the one fitted on the machine the package was released
from unless ``--cost-model`` names another; ``--fit`` fits one from your own
sweep results (``benchmarks/simcluster/sweep.py``, or ``bench allreduce``
and ``bench compression`` run on your cluster with ``link`` set).
"""
import argparse
import json
import math
import os

from ..checks import argument, number, whole, whole_list
from ..fault.errors import UsageError

from .costmodel import ALGORITHMS, ONEBIT_ADAM, CostModel, even_buckets, parse_rate, step_time

DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "default_costmodel.json")
BUCKETS_MB = (1, 2, 5, 10, 25, 50, 100)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=_typed(parse_count), help="model parameters, e.g. 124M or 1.3G (float32 gradients)")
    p.add_argument("--step-compute-s", type=argument(number(0, above=True)),
                   help="seconds of forward + backward + optimizer on one node")
    p.add_argument("--link", default="1gbit", type=_typed(_checked_rate),
                   help="link rate per node, tc notation: 100mbit, 1gbit, 25gbit")
    p.add_argument("--nodes", default=[2, 4, 8, 16, 32], type=argument(whole_list(1)),
                   help="node counts (default 2,4,8,16,32)")
    p.add_argument("--ranks-per-node", type=argument(whole(1)), default=1,
                   help="ranks on each node, over shared memory (default 1)")
    p.add_argument("--calibrate", action="store_true",
                   help="time the codecs and the reducer's copies on this machine (a few seconds) and use them")
    p.add_argument("--compressors", help="compressors to consider (default: every one in the cost model)")
    p.add_argument("--max-loss-penalty", type=argument(number(0)), default=0.02,
                   help="leave out compressors that cost more validation loss than this in the training sweep "
                        "(default 0.02, i.e. 2%%)")
    p.add_argument("--cost-model", default=DEFAULT_MODEL, help="cost model JSON (default: the packaged one)")
    p.add_argument("--fit", nargs="+", metavar="JSON", help="fit the cost model from these sweep results instead")
    p.add_argument("--save-model", metavar="FILE", help="write the (fitted) cost model here")
    p.add_argument("--json", metavar="FILE", help="write the plan as JSON")


def parse_count(text: str) -> float:
    """A parameter count: ``124M``, ``1.3G`` (or ``B``), ``350K`` or a plain number; decimal units."""
    t = str(text).strip().upper()
    scale = {"K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12}.get(t[-1:], 1.0)
    try:
        value = float(t[:-1] if scale != 1.0 else t) * scale
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--params looks like 124M, 1.3G or 350000, got {text!r}")
    return value


def _typed(parse):
    """An argparse type from a parser that raises ValueError with its own message."""
    def convert(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).replace("--params ", "")) from None
    return convert


def _checked_rate(text: str) -> str:
    parse_rate(text)  # raises ValueError saying what a rate looks like
    return text


def load_model(args) -> CostModel:
    if args.fit:
        from .fit import fit_cost_model
        return fit_cost_model(args.fit)
    if not os.path.exists(args.cost_model):
        raise UsageError(f"plan: no cost model at {args.cost_model} — fit one with --fit RESULTS.json ...")
    return CostModel.load(args.cost_model)


def best(model: CostModel, total_bytes: float, compute_s: float, n: int, rate: float, compressors,
         k: int = 1) -> dict:
    """The fastest (algorithm, bucket, compressor) for ``n`` nodes of ``k`` ranks, with its predicted step time."""
    top = None
    for spec in ["none", *compressors]:
        if spec == "none":
            # Two levels: MPI_Allreduce is left out, as its textbook form here predicted it 19-28% faster
            # than measured at 2 x 2 (benchmarks/README.md); the two rings were predicted within 1-16%.
            choices = [(a, False) for a in (("hierarchical", "ring") if k > 1 else ALGORITHMS)]
        elif spec == ONEBIT_ADAM:  # its two-stage allreduce runs over all ranks alike
            choices = [("ring", False)]
        else:  # compressed: across nodes only (the node-aware ring), or on every hop of the flat ring
            choices = [("hierarchical", True), ("ring", False)] if k > 1 else [("ring", False)]
        for algorithm, node_aware in choices:
            for cap_mb in BUCKETS_MB:
                buckets = even_buckets(total_bytes, cap_mb * 1e6)

                def comm(b, spec=spec, algorithm=algorithm, node_aware=node_aware):
                    return model.compressed_time(b, n, rate, spec, algorithm=algorithm, k=k, node_aware=node_aware)
                t = step_time(compute_s, buckets, comm, model.overlap)
                if top is None or t < top["step_s"]:
                    top = {"nodes": n, "ranks_per_node": k, "step_s": t, "algorithm": algorithm,
                           "bucket_cap_mb": cap_mb, "compression": spec, "node_aware": node_aware,
                           "efficiency": compute_s / t, "speedup": n * k * compute_s / t,
                           "comm_s": sum(comm(b) for b in buckets)}
    return top


def plan(model: CostModel, params: float, compute_s: float, rate: float, nodes, compressors, k: int = 1) -> list:
    total = 4.0 * params
    return [{"uncompressed": best(model, total, compute_s, n, rate, [], k),
             "best": best(model, total, compute_s, n, rate, compressors, k)} for n in nodes]


def main(args) -> int:
    model = load_model(args)
    if args.calibrate:
        from .calibrate import calibrate
        calibrate(model)
    if args.save_model:
        model.save(args.save_model)
        print(f"# wrote the cost model to {args.save_model}")
    if args.params is None and args.step_compute_s is None:
        if not args.save_model:
            raise UsageError("plan: --params and --step-compute-s are needed — give both (or --fit ... "
                             "--save-model FILE)")
        return 0
    if args.params is None or args.step_compute_s is None:
        raise UsageError("plan: --params and --step-compute-s are both needed — e.g. --params 124M "
                         "--step-compute-s 0.35")
    params, rate, nodes = args.params, parse_rate(args.link), args.nodes
    wanted = [c.strip() for c in args.compressors.split(",")] if args.compressors else sorted(model.compressors)
    unknown = [c for c in wanted if c not in model.compressors]
    if unknown:
        raise UsageError(f"plan: --compressors: the cost model has no figures for {unknown} — it has "
                         f"{sorted(model.compressors)}")
    from .fit import accuracy_key
    penalty = {c: 0.0 if accuracy_key(c) == "none" else model.loss_penalty.get(accuracy_key(c)) for c in wanted}
    # Unmeasured accuracy counts against a compressor unless it was asked for by name.
    lossy = [c for c in wanted if (penalty[c] is None and not args.compressors)
             or (penalty[c] is not None and penalty[c] > args.max_loss_penalty)]
    allowed = [c for c in wanted if c not in lossy]
    k = args.ranks_per_node
    rows = plan(model, params, args.step_compute_s, rate, nodes, allowed, k)
    print(f"# ringtrain plan: {params / 1e6:,.1f}M parameters ({4 * params / 1e6:,.0f} MB of float32 gradients), "
          f"{args.step_compute_s * 1e3:.0f} ms compute per step, {args.link} links "
          f"(modelled at {100 * model.efficiency_at(rate):.0f}% efficiency, alpha {model.alpha * 1e6:.0f} us)"
          + (f", {k} ranks per node (intra-node alpha {model.intra_alpha * 1e6:.0f} us, "
             f"{_gbps(model.intra_beta)})" if k > 1 else ""))
    for name, where in sorted(model.origin.items()):
        print(f"# {name}: {where}")
    if lossy:
        print(f"# left out, validation loss more than {100 * args.max_loss_penalty:.0f}% worse in the training sweep: "
              + ", ".join(f"{c} ({'not trained' if penalty[c] is None else f'{100 * penalty[c]:+.1f}%'})"
                          for c in lossy))
    print(f"{'nodes':>5} {'step_ms':>9} {'efficiency':>10} {'speedup':>7} {'algorithm':>18} {'bucket_MB':>9} "
          f"{'compression':>20}   {'uncompressed: step_ms':>21} {'eff':>5} {'algorithm':>18} {'bucket_MB':>9}")
    for row in rows:
        b, u = row["best"], row["uncompressed"]
        compression = b["compression"] + (" (across nodes)" if b["node_aware"] and b["compression"] != "none" else "")
        print(f"{b['nodes']:>5} {1e3 * b['step_s']:>9.1f} {b['efficiency']:>10.2f} {b['speedup']:>7.2f} "
              f"{b['algorithm']:>18} {b['bucket_cap_mb']:>9g} {compression:>20}   {1e3 * u['step_s']:>21.1f} "
              f"{u['efficiency']:>5.2f} {u['algorithm']:>18} {u['bucket_cap_mb']:>9g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"plan": rows, "args": vars(args), "left_out": lossy, "origin": model.origin}, f, indent=1)
        print(f"# wrote {args.json}")
    return 0


def _gbps(beta: float) -> str:
    return f"{1 / beta / 1e9:.1f} GB/s" if beta > 0 else "free"
