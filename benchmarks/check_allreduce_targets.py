"""Read `bench allreduce` JSON and report the foundation issue's targets, each with its peer's figure.

    python benchmarks/check_allreduce_targets.py N2.json N4.json

Exits 1 if a target is missed, so a sweep can be used as a gate; the table is
the point, though: every line shows both figures from the same run.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ringtrain.results import load_result  # noqa: E402

MIB = 1 << 20


def rows_by(path):
    data = load_result(path)
    table = {}
    for row in data["rows"]:
        table[(row["algorithm"], row["size"])] = row
    return data, table


def size(n: int) -> str:
    return f"{n // MIB}M" if n >= MIB else f"{n // 1024}K" if n >= 1024 else f"{n}B"


def main(n2_path: str, n4_path: str) -> int:
    missed = 0

    def report(ok: bool, text: str):
        nonlocal missed
        missed += not ok
        print(f"  [{'met' if ok else 'MISSED'}] {text}")

    n2, t2 = rows_by(n2_path)
    print(f"2 ranks, shared memory ({n2['meta']['mpi_library'].splitlines()[0].strip()}, {n2['meta']['date']}):")
    print("  ring busbw >= 1.2x in-place MPI_Allreduce from 4 MiB to 256 MiB")
    for (alg, s), row in sorted(t2.items(), key=lambda kv: kv[0][1]):
        if alg == "ring" and 4 * MIB <= s <= 256 * MIB:
            peer = t2[("MPI_Allreduce", s)]
            report(row["vs_mpi"] >= 1.2, f"{size(s):>5}: ring {row['busbw']:.2f} GB/s, MPI {peer['busbw']:.2f} GB/s, "
                                         f"ratio {row['vs_mpi']:.2f}")
    print("  auto time <= 1.3x MPI_Allreduce from 4 B to 64 KiB (check=False; the handshake row follows)")
    for (alg, s), row in sorted(t2.items(), key=lambda kv: kv[0][1]):
        if alg == "auto" and s <= 64 * 1024:
            peer = t2[("MPI_Allreduce", s)]
            checked = t2.get(("auto+check", s))
            extra = f", with check {checked['time_us']:.1f} us" if checked else ""
            report(row["time_us"] <= 1.3 * peer["time_us"],
                   f"{size(s):>5}: auto {row['time_us']:.1f} us, MPI {peer['time_us']:.1f} us, "
                   f"ratio {row['time_us'] / peer['time_us']:.2f}{extra}")
    share = n2["summary"].get("ring_busbw_vs_memcpy")
    if share is not None:
        print(f"  ring busbw at 64 MiB = {100 * share:.0f}% of single-core memcpy ({n2['memcpy_GBps']:.1f} GB/s)")

    n4, t4 = rows_by(n4_path)
    print(f"4 ranks, shared memory, oversubscribed on {n4['meta']['cpus']} cores:")
    print("  ring faster than ps at >= 1 MiB")
    for (alg, s), row in sorted(t4.items(), key=lambda kv: kv[0][1]):
        if alg == "ring" and s >= MIB:
            ps = t4[("ps", s)]
            report(row["time_us"] < ps["time_us"], f"{size(s):>5}: ring {row['time_us'] / 1e3:.2f} ms, "
                                                   f"ps {ps['time_us'] / 1e3:.2f} ms, "
                                                   f"MPI {t4[('MPI_Allreduce', s)]['time_us'] / 1e3:.2f} ms")
    print(f"{missed} target rows missed")
    return 1 if missed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
