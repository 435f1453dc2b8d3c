"""Options the size-sweeping benchmarks share: the sweep, the repetitions, and a comma-separated choice.

>>> chosen("ring, ps", ("ring", "ps", "auto"), "--algorithms", "bench allreduce")
['ring', 'ps']
"""
import argparse

from .sizes import parse_bytes


def add_sweep_arguments(p: argparse.ArgumentParser, *, min_bytes: str, max_bytes: str, iter_bytes: str,
                        min_iters: int) -> None:
    """--min-bytes/--max-bytes/--step-factor, --repeat, --warmup, --iter-bytes and --min-iters, with these defaults."""
    p.add_argument("--min-bytes", type=parse_bytes, default=parse_bytes(min_bytes),
                   help=f"smallest message (default {min_bytes})")
    p.add_argument("--max-bytes", type=parse_bytes, default=parse_bytes(max_bytes),
                   help=f"largest message (default {max_bytes})")
    p.add_argument("--step-factor", type=int, default=2, help="size multiplier between rows (default 2)")
    p.add_argument("--repeat", type=int, default=5, help="repetitions; the median is reported (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before each timing (default 2)")
    p.add_argument("--iter-bytes", type=parse_bytes, default=parse_bytes(iter_bytes),
                   help=f"bytes to move per timing; sets the calls per timing (default {iter_bytes}; less on slow "
                        "links)")
    p.add_argument("--min-iters", type=int, default=min_iters,
                   help=f"fewest timed calls per timing (default {min_iters})")


def chosen(text: str, allowed, flag: str, bench: str) -> list[str]:
    """The names in comma-separated ``text``; SystemExit naming ``flag`` if any is not ``allowed`` or none is given."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise SystemExit(f"{bench}: {flag} has {unknown or 'nothing'}; choose from {tuple(allowed)}")
    return names


def check_sweep(args, bench: str) -> None:
    """SystemExit naming the flags unless --repeat, --min-iters, --iter-bytes >= 1 and --warmup >= 0."""
    if args.repeat < 1 or args.warmup < 0 or args.min_iters < 1 or args.iter_bytes < 1:
        raise SystemExit(f"{bench}: need --repeat >= 1, --warmup >= 0, --min-iters >= 1 and --iter-bytes >= 1, "
                         f"got {args.repeat}, {args.warmup}, {args.min_iters}, {args.iter_bytes}")
