"""Convert result files written before ringtrain's result format 2, in place, once.

    python benchmarks/convert_results.py benchmarks/results/*.json benchmarks/results/*/*.json

Old files kept some facts at the top level (``world_size``, ``date``,
``mpi_library``; ``link``, ``hosts`` and ``cores``, which the sweep added
afterwards) and others in ``meta``; some had no link but their file name
(``_1gbit``, ``_shm``). Everything moves into the one ``meta`` block that
ringtrain.results writes. Files that are not benchmark results (a cost model,
the fault-tolerance figures) and files already converted are left alone. The
trace, buffer-sync and dataset overheads had neither name nor meta: they get
both, from the key only each has and the one host they ran on.
"""
import json
import os
import re
import sys

from ringtrain.results import FORMAT, SHARED_MEMORY

MOVED = ("world_size", "date", "mpi_library", "link", "hosts", "cores")
# Benchmarks that once wrote a bare body, known by a key only theirs has; all ran on one host.
UNNAMED = {"span_call_ns": "trace_overhead", "broadcast_us": "buffer_sync_cost",
           "overhead_vs_corpus": "dataset_overhead"}


def convert(path: str) -> bool:
    with open(path) as f:
        data = json.load(f)
    if "kill_trials" in data or "death_to_exit" in data:  # fault_tolerance.py's, which had no name
        data = {"benchmark": "fault_tolerance", **data}
    for key, name in UNNAMED.items():
        if "benchmark" not in data and key in data:
            data = {"benchmark": name, **data, "meta": {"world_size": data["ranks"], "hosts": 1,
                                                        "link": SHARED_MEMORY}}
    if "benchmark" not in data or data.get("meta", {}).get("format") == FORMAT:
        return False
    meta = dict(data.get("meta", {}))
    for key in MOVED:
        if key in data:
            meta[key] = data.pop(key)
    if not meta.get("link"):
        name = os.path.basename(path)
        rate = re.search(r"_(\d+(?:\.\d+)?[kmgt]?bit)\b", name)
        meta["link"] = rate.group(1) if rate else SHARED_MEMORY if "_shm" in name or "_n1" in name else None
    if meta["link"] == SHARED_MEMORY:
        meta.setdefault("hosts", 1)
    meta["format"] = FORMAT
    body = {k: v for k, v in data.items() if k not in ("benchmark", "meta")}
    with open(path, "w") as f:
        json.dump({"benchmark": data["benchmark"], "meta": meta, **body}, f, indent=1)
    return True


if __name__ == "__main__":
    changed = [p for p in sys.argv[1:] if convert(p)]
    print(f"converted {len(changed)} of {len(sys.argv) - 1} files: {', '.join(changed)}")
